"""Speed and peak memory of calibrate_selection as the queries grow, against export_negatives on the same
files (the baseline: the stage that must read every query).

Synthetic stage outputs from `bench/export_memory.py` (`--docs` passages, random 384-d unit vectors, 100
candidates a query, one positive a query and a second one for every tenth, so a tenth of the queries give
held-out evidence), cosine selection. Each of `negflow.calibration.calibrate` (fn_budget 0.05) and
`negflow.export.export_negatives` (the default selection) runs in a child process; printed: wall time,
queries/s and peak RSS (the child's own, VmHWM) of each, and calibrate's time and memory as a share of export's.
Calibration reads its sampled queries only (at most 5,000 multi-positive plus 2,000 for hardness), so its
time should grow far slower than the queries and its memory stay flat.

Usage: python bench/calibration_scale.py [--docs 300000] [--queries 100000 300000]
       [--workdir /tmp/negflow-bench-calibration-scale]
       python bench/calibration_scale.py --smoke   # 2,000 passages, 300 and 600 queries: the code path only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from export_memory import run_stage, write_corpus, write_queries  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=300_000)
    parser.add_argument("--queries", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--workdir", default="/tmp/negflow-bench-calibration-scale")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code path only")
    args = parser.parse_args()
    if args.smoke:
        args.docs, args.queries = 2000, [300, 600]
    root = Path(args.workdir) / f"docs-{args.docs}"
    if not (root / "corpus-1-of-1.npy").exists():
        root.mkdir(parents=True, exist_ok=True)
        write_corpus(root, args.docs, np.random.default_rng(0))
    rows = []
    for n in args.queries:
        folder = root / f"queries-{n}"
        if not (folder / "qrels.parquet").exists():
            start = time.perf_counter()
            write_queries(folder, n, args.docs, np.random.default_rng(n), two_positives_every=10)
            print(f"wrote {n:,} queries x 100 candidates in {time.perf_counter() - start:.0f} s", flush=True)
        export = run_stage("export", folder, root, scores=False)
        calibrate = run_stage("calibrate", folder, root, scores=False)
        rows.append((n, export, calibrate))
        print(f"{n:,} queries: calibration evidence {calibrate['summary']['evidence']}", flush=True)
    print(f"\ncorpus {args.docs:,} passages x 384; 100 candidates a query, a tenth with two positives; cosine")
    print(f"{'queries':>10s} {'stage':>10s} {'seconds':>8s} {'queries/s':>10s} {'peak RSS MB':>12s}")
    for n, export, calibrate in rows:
        for name, r in (("export", export), ("calibrate", calibrate)):
            print(f"{n:10,d} {name:>10s} {r['seconds']:8.1f} {n / r['seconds']:10,.0f} {r['peak_mb']:12,.0f}")
        print(
            f"{'':10s} calibrate / export (baseline): time {calibrate['seconds'] / export['seconds']:.2f}x, "
            f"peak RSS {calibrate['peak_mb'] / export['peak_mb']:.2f}x"
        )


if __name__ == "__main__":
    main()
