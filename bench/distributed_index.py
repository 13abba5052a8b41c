"""The beyond-one-node index path on synthetic unit vectors, each step in its own process as the
workflow's jobs would run it: train_index, add_to_index per shard, build_index (merge), and one search
job, against the baseline of a search job over an exact flat index. Prints wall time and memory per step
(private memory vs file-backed pages of the memory-mapped shards, which the page cache shares and can
evict) and the search job's ratios against the flat baseline.

    .venv/bin/python bench/distributed_index.py [--docs 1000000] [--dim 384] [--shards 4]
    .venv/bin/python bench/distributed_index.py --smoke   # 8,000 x 64, 2 shards: checks the code path only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "scripts"), str(Path(__file__).resolve().parent)]

from process_memory import process_status_mb  # noqa: E402


def memory() -> dict[str, int]:
    """Peak resident set and the current private (anonymous) and file-backed parts, in MB."""
    return process_status_mb("VmHWM", "RssAnon", "RssFile")


def run_step(step: str, workdir: str, args: argparse.Namespace) -> dict:
    """One step in this process; returns its figures."""
    from negflow import search as S

    shards = [f"{workdir}/{i}-of-{args.shards}.npy" for i in range(1, args.shards + 1)]
    settings = {
        "index": "ivfpq",
        "ivf_nlist": args.nlist,
        "ivf_nprobe": 16,
        "ivfpq_m": args.m,
        "seed": 1,
        "device": "cpu",
    }
    start = time.perf_counter()
    extra = {}
    if step == "train_index":
        S.train_index(shards, settings, f"{workdir}/trained.faiss")
    elif step.startswith("add_to_index"):
        shard = step.split()[1]
        S.add_shard_to_index(f"{workdir}/trained.faiss", shards, shard, f"{workdir}/part-{shard}.faiss")
    elif step == "build_index":
        S.merge_index_parts([f"{workdir}/part-{s.rsplit('/', 1)[1][:-4]}.faiss" for s in shards], f"{workdir}/ix.faiss")
    else:  # a search job: load the index, 1000 queries, k = 4 x 100 as ivfpq asks
        corpus = S.ShardedEmbeddings(shards)
        flat = step == "search (flat)"
        if flat:  # the whole matrix in an in-memory IndexFlatIP
            index = S.build_index(corpus, "flat", settings)
        else:
            index = S.load_index(corpus, {**settings, "index": "ivfpq"}, f"{workdir}/ix.faiss", False)
        queries = np.ascontiguousarray(corpus.take(np.arange(0, len(corpus), len(corpus) // 1000)[:1000]))
        t = time.perf_counter()
        _, hits = index.search(queries, 400)
        for q, row in zip(queries, hits, strict=True):
            S.top_candidates(q, row, set(), corpus, 100)
        extra["search_s"] = round(time.perf_counter() - t, 2)
    return {"step": step, "wall_s": round(time.perf_counter() - start, 2), **memory(), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--m", type=int, default=48)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code path only")
    args = parser.parse_args()
    if args.smoke:  # the steps get --smoke too (sys.argv), so they see the same sizes
        args.docs, args.dim, args.shards, args.nlist, args.m = 8000, 64, 2, 32, 8
    if args.step:
        print(json.dumps(run_step(args.step, args.workdir, args)))
        return

    with tempfile.TemporaryDirectory() as workdir:
        rng = np.random.default_rng(0)
        for i in range(args.shards):
            n = args.docs * (i + 1) // args.shards - args.docs * i // args.shards
            x = rng.standard_normal((n, args.dim), dtype=np.float32)
            np.save(f"{workdir}/{i + 1}-of-{args.shards}.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
        steps = ["train_index", *(f"add_to_index {i}-of-{args.shards}" for i in range(1, args.shards + 1))]
        steps += ["build_index", "search (ivfpq)", "search (flat)"]
        rows = []
        for step in steps:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--step", step, "--workdir", workdir]
            rows.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))
    matrix_mb = args.docs * args.dim * 4 // 2**20
    print(f"corpus {args.docs} x {args.dim} float32 = {matrix_mb} MB; ivfpq nlist {args.nlist}, {args.m} bytes/vector")
    print(f"{'step':<22}{'wall s':>8}{'peak RSS MB':>13}{'private MB*':>12}{'file MB*':>9}{'search s':>10}")
    for r in rows:
        memory_cols = f"{r['VmHWM']:>13}{r['RssAnon']:>12}{r['RssFile']:>9}"
        print(f"{r['step']:<22}{r['wall_s']:>8}{memory_cols}{r.get('search_s', ''):>10}")
    print("* resident at the end of the step; file = pages of the memory-mapped shards (shared, evictable)")
    pq, flat = rows[-2], rows[-1]
    print(
        f"search job vs flat baseline: private memory {pq['RssAnon'] / flat['RssAnon']:.3f}x, "
        f"peak RSS {pq['VmHWM'] / flat['VmHWM']:.2f}x, search time {pq['search_s'] / flat['search_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
