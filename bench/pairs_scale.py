"""How fast read_pairs turns a large pair file into BEIR tables, and how much memory it needs for it.

A synthetic `.jsonl.gz` of `["anchor", "positive"]` lines with MS MARCO-like lengths (anchors of 4-12 words,
positives of 30-80 words from a 20,000-word vocabulary; 5% of lines repeat an earlier anchor, 2% an earlier
positive) is read by `negflow.read_pairs.read_pairs` in a child process pinned to one core. Printed beside
the file's size: wall time, lines/s, peak RSS (the child's own: VmHWM), and the distinct texts' Arrow size
(UTF-8 bytes plus an 8-byte offset per text, what the stage streams to disk), with the two targets:
at least 100,000 lines/s on one core and peak RSS under 1.5x that Arrow size. The child's CPU seconds are
printed too: on a slow disk, writing the 10M-line tables (8.6 GB) adds waits that are not the reader's. A
second, smaller baseline in the same run reads the same file with `json.loads` and a Python dict of texts,
the one-off script's way.

Usage: python bench/pairs_scale.py [--lines 10000000] [--workdir /tmp/negflow-bench-pairs-scale]
       python bench/pairs_scale.py --smoke   # 5,000 lines: checks the code path only
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

READ = """
import os, sys, time
os.sched_setaffinity(0, {{0}})
sys.path.insert(0, {scripts!r})
from negflow.pair_shapes import PairSettings
from negflow.read_pairs import PairTables, read_pairs
out = {out!r}
start = time.perf_counter()
names = ("corpus", "queries", "qrels", "query_lines", "doc_hashes")
tables = PairTables(*[f"{{out}}/{{n}}.parquet" for n in names], manifest=out + "/manifest.json")
result = read_pairs({pairs!r}, None, PairSettings(), tables)
print(time.perf_counter() - start, result["counts"]["records"], result["counts"]["distinct_texts"])
"""

BASELINE = """
import gzip, json, os, sys, time
os.sched_setaffinity(0, {{0}})
start = time.perf_counter()
ids, lines = {{}}, 0
with gzip.open({pairs!r}, "rt", encoding="utf-8") as f:
    for line in f:
        anchor, positive = json.loads(line)
        ids.setdefault(anchor, len(ids)); ids.setdefault(positive, len(ids))
        lines += 1
print(time.perf_counter() - start, lines, len(ids))
"""


def write_pairs(path: Path, lines: int, seed: int = 0) -> None:
    """Synthetic pair lines, written in blocks (numpy draws the words, Python joins them)."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i:05d}"[: 3 + i % 7] + chr(97 + i % 26) * (1 + i % 4) for i in range(20_000)])
    anchors: list[str] = []
    positives: list[str] = []
    block = 100_000
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for start in range(0, lines, block):
            n = min(block, lines - start)
            a_len = rng.integers(4, 13, n)
            p_len = rng.integers(30, 81, n)
            words = vocab[rng.zipf(1.3, int(a_len.sum() + p_len.sum())) % len(vocab)]
            cut = np.cumsum(np.r_[0, a_len, p_len])
            texts = [" ".join(words[cut[i] : cut[i + 1]]) for i in range(2 * n)]
            new_a, new_p = texts[:n], texts[n:]
            repeat_a = rng.random(n) < 0.05
            repeat_p = rng.random(n) < 0.02
            out = []
            for i in range(n):
                a = anchors[rng.integers(len(anchors))] if repeat_a[i] and anchors else new_a[i]
                p = positives[rng.integers(len(positives))] if repeat_p[i] and positives else new_p[i]
                out.append(json.dumps([a, p]))
            anchors = new_a[:1000]
            positives = new_p[:1000]
            f.write("\n".join(out) + "\n")


PEAK = f"""
sys.path.insert(0, {str(REPO / "bench")!r})
from process_memory import peak_rss_mb
print(peak_rss_mb())
"""


def run_child(code: str) -> tuple[list[str], float, float, float]:
    """Run `code` in a fresh interpreter; its printed fields, its wall time, its own peak RSS in MB (VmHWM,
    which it prints last: its ru_maxrss would start from this process's peak) and its CPU seconds (os.wait4
    gives this child's rusage, not the maximum over all children)."""
    code += PEAK
    start = time.perf_counter()
    with (
        open(os.devnull, "w") as devnull,
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=devnull, text=True) as proc,
    ):
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {code}")
    *fields, peak = output.split()
    return fields, time.perf_counter() - start, float(peak), usage.ru_utime + usage.ru_stime


def arrow_size(out: Path) -> float:
    """MB of the distinct texts as an Arrow large_string array: UTF-8 bytes plus an 8-byte offset each."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    total = 0
    for name in ("corpus", "queries"):
        texts = pq.read_table(out / f"{name}.parquet", columns=["text"])["text"]
        total += pc.sum(pc.binary_length(texts)).as_py() + 8 * len(texts)
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--workdir", default="/tmp/negflow-bench-pairs-scale")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code path only")
    args = parser.parse_args()
    if args.smoke:
        args.lines = 5000
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pairs = workdir / f"pairs-{args.lines}.jsonl.gz"
    if not pairs.exists():
        start = time.perf_counter()
        write_pairs(pairs.with_suffix(".tmp"), args.lines)
        os.replace(pairs.with_suffix(".tmp"), pairs)
        print(f"wrote {pairs} in {time.perf_counter() - start:.0f} s")
    out = workdir / "tables"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: replacing old outputs would be timed too
    os.sync()  # and the old outputs' deletion (discards, journal) finished before it starts
    code = READ.format(scripts=str(REPO / "scripts"), out=str(out), pairs=str(pairs))
    fields, wall, peak, cpu_seconds = run_child(code)
    seconds, records, distinct = float(fields[0]), int(fields[1]), int(fields[2])
    texts_mb = arrow_size(out)
    base_fields, base_wall, base_peak, base_cpu = run_child(BASELINE.format(pairs=str(pairs)))
    base_seconds = float(base_fields[0])

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    size = pairs.stat().st_size / 2**20
    print(f"\n{pairs.name}: {size:,.0f} MB gzipped, {records:,} lines, {distinct:,} distinct texts")
    print(f"CPU: {cpu}, one core (sched_setaffinity)")
    print(f"{'reader':52s} {'seconds':>8s} {'lines/s':>10s} {'CPU s':>7s} {'peak RSS MB':>12s}")
    name = "negflow read_pairs (BEIR tables + id map written)"
    print(f"{name:52s} {seconds:8.1f} {records / seconds:10,.0f} {cpu_seconds:7.1f} {peak:12,.0f}")
    print(
        f"{'baseline: json.loads + dict of texts (nothing written)':52s} {base_seconds:8.1f} "
        f"{records / base_seconds:10,.0f} {base_cpu:7.1f} {base_peak:12,.0f}"
    )
    print(f"\ndistinct texts' Arrow size: {texts_mb:,.0f} MB")
    print(
        f"lines/s: {records / seconds:,.0f} (target >= 100,000): {'PASS' if records / seconds >= 100_000 else 'FAIL'}"
    )
    ratio = peak / texts_mb
    print(f"peak RSS / Arrow size: {ratio:.2f}x (target < 1.5x): {'PASS' if ratio < 1.5 else 'FAIL'}")
    print(f"negflow / baseline time: {seconds / base_seconds:.2f}x; process wall time with start-up {wall:.1f} s")
    print(f"CPU seconds (user + system, the rest is waiting on the disk): {cpu_seconds:.1f}")


if __name__ == "__main__":
    main()
