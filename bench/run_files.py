"""How fast a run file (a candidate source of `{run: FILE}`) is read into columns, and at what peak memory:
negflow's Arrow readers against the line reader they fall back to (`json.loads` or `str.split` per line
into Python lists, then Arrow arrays), each in a fresh process on the same file.

Synthetic runs in both formats: MS MARCO-like ids (queries among 500,000, passages among 8.8M), one line
per (query, candidate), ranks and scores as a BM25 run writes them. Printed per format: lines/s and peak
RSS (the child's own: VmHWM) of each reader, and their ratios; the columns of the two readers are checked
equal (a hash of each whole column, taken after the timing).

Usage: python bench/run_files.py [--lines 5000000] [--workdir /tmp/negflow-bench-run-files]
       python bench/run_files.py --smoke   # 20,000 lines: checks the code path only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from process_memory import in_fresh_process  # noqa: E402

READ = """
import hashlib, json, sys, time
sys.path[:0] = [{scripts!r}, {bench!r}]
from process_memory import peak_rss_mb
import numpy as np
import pyarrow as pa
from negflow.sources import _arrow_columns, _run_lines
path, reader = {path!r}, {reader!r}
start = time.perf_counter()
if reader == "arrow":
    columns = _arrow_columns(path)
    assert columns is not None, "the Arrow reader refused a well-formed file"
    lines, qids, dids, ranks, scores = columns.lines, columns.query_ids, columns.doc_ids, columns.ranks, columns.scores
else:  # the line reader, into Python lists, then the same columns
    lines, q, d, r, s = [], [], [], [], []
    for number, qid, did, rank, score in _run_lines(path):
        lines.append(number); q.append(qid); d.append(did); r.append(rank); s.append(score)
    lines, qids, dids = np.array(lines), pa.array(q, pa.string()), pa.array(d, pa.string())
    ranks, scores = np.array(r, dtype=np.int64), np.array(s)
seconds = time.perf_counter() - start
rss_mb = peak_rss_mb()  # before the check's Python strings
check = [hashlib.sha256(np.asarray(lines, dtype=np.int64).tobytes()).hexdigest(),
         hashlib.sha256("\\n".join(qids.to_pylist()).encode()).hexdigest(),
         hashlib.sha256("\\n".join(dids.to_pylist()).encode()).hexdigest(),
         hashlib.sha256(np.asarray(ranks, dtype=np.int64).tobytes()).hexdigest(),
         hashlib.sha256(np.asarray(scores, dtype=np.float64).tobytes()).hexdigest()]
print(json.dumps({{"seconds": seconds, "rss_mb": rss_mb,
                  "rows": len(lines), "check": check}}))
"""


def write_runs(workdir: Path, n: int) -> dict[str, Path]:
    """The same synthetic run as TREC and JSONL, written in blocks (no list of n lines in memory)."""
    rng = np.random.default_rng(0)
    paths = {"trec": workdir / f"run-{n}.trec", "jsonl": workdir / f"run-{n}.jsonl"}
    if all(p.exists() for p in paths.values()):
        return paths
    per_query, query_ids = 100, rng.permutation(500_000)
    with paths["trec"].open("w") as trec, paths["jsonl"].open("w") as jsonl:
        for start in range(0, n, 500_000):
            size = min(500_000, n - start)
            rows = np.arange(start, start + size)
            queries = query_ids[rows // per_query % 500_000]
            docs = rng.integers(0, 8_800_000, size)
            ranks = rows % per_query + 1
            scores = 30.0 - ranks * 0.1 + rng.random(size)
            trec.write(
                "".join(
                    f"{q} Q0 {d} {r} {s:.4f} bm25\n" for q, d, r, s in zip(queries, docs, ranks, scores, strict=True)
                )
            )
            jsonl.write(
                "".join(
                    json.dumps({"query_id": str(q), "doc_id": str(d), "rank": int(r), "score": round(float(s), 4)})
                    + "\n"
                    for q, d, r, s in zip(queries, docs, ranks, scores, strict=True)
                )
            )
    return paths


def read(path: Path, reader: str) -> dict:
    code = READ.format(scripts=str(REPO / "scripts"), bench=str(REPO / "bench"), path=str(path), reader=reader)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=5_000_000)
    parser.add_argument("--workdir", default="/tmp/negflow-bench-run-files")
    parser.add_argument("--smoke", action="store_true", help="20,000 lines: checks the code path only")
    args = parser.parse_args()
    n = 20_000 if args.smoke else args.lines
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = in_fresh_process(write_runs, workdir, n)
    print(f"{n:,} run lines, each reader in a fresh process")
    print(f"{'format':7s} {'reader':12s} {'lines/s':>12s} {'peak RSS MB':>12s}")
    for fmt, path in paths.items():
        arrow, lines = read(path, "arrow"), read(path, "line")
        assert arrow["rows"] == lines["rows"] == n and arrow["check"] == lines["check"], (arrow, lines)
        for name, r in (("arrow", arrow), ("line reader", lines)):
            print(f"{fmt:7s} {name:12s} {n / r['seconds']:12,.0f} {r['rss_mb']:12,.0f}")
        print(
            f"{fmt} arrow / line reader (baseline): lines/s {lines['seconds'] / arrow['seconds']:.2f}x, "
            f"peak RSS {arrow['rss_mb'] / lines['rss_mb']:.2f}x"
        )


if __name__ == "__main__":
    main()
