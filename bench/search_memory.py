"""Peak memory of the search stage at 1M documents, against an in-memory FAISS flat index.

Corpus: 1M x 384 seeded random unit vectors (1.5 GB as float32) in an embedding shard, 10k queries, top-100
(flat index, exact). Each search runs in its own process and reports its own peak RSS (VmHWM):

1. negflow's search stage (`search_shard`, the function the rule calls): corpus chunks read from the
   memory-mapped shard, FAISS's exact kernel per chunk merged into a running top-k, pages released after
   each chunk, then the float64 rerank;
2. baseline: the whole matrix loaded into a FAISS IndexFlatIP, as mine_hard_negatives(use_faiss=True)
   and most mining scripts do. (Its default exact path, use_faiss=False, scores faiss_batch_size=16384
   queries against the whole corpus at once: 16384 x 1M x 4 B = 65 GB, more than this machine has, so it
   is not run.)

Usage: python bench/search_memory.py [--workdir /tmp/negflow-bench-memory] [--docs 1000000] [--queries 10000]
       python bench/search_memory.py --smoke   # 5,000 passages, 300 queries: the code path only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "bench")]

from process_memory import peak_rss_mb  # noqa: E402

DIM = 384
K = 100
BATCH = 4096  # search_batch_size default


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_inputs(work: Path, docs: int, queries: int) -> None:
    """Embedding shards and the prepared id tables the search stage reads; written chunk by chunk."""
    import datasets

    if (work / "done").exists():
        return
    rng = np.random.default_rng(0)
    corpus = np.lib.format.open_memmap(work / "corpus-1-of-1.npy", mode="w+", dtype=np.float32, shape=(docs, DIM))
    for start in range(0, docs, 100_000):
        corpus[start : start + 100_000] = unit_rows(rng, min(100_000, docs - start))
    corpus.flush()
    del corpus
    np.save(work / "queries-1-of-1.npy", unit_rows(rng, queries))
    datasets.Dataset.from_dict({"id": [f"d{i}" for i in range(docs)]}).save_to_disk(str(work / "corpus"))
    datasets.Dataset.from_dict({"id": [f"q{i}" for i in range(queries)]}).save_to_disk(str(work / "queries"))
    qrels = {  # one judged document per query, excluded from its candidates as in a real run
        "query_id": [f"q{i}" for i in range(queries)],
        "doc_id": [f"d{i}" for i in range(queries)],
        "doc_row": list(range(queries)),
        "score": [1] * queries,
        "positive": [True] * queries,
    }
    datasets.Dataset.from_dict(qrels).save_to_disk(str(work / "qrels"))
    (work / "done").touch()


def run_negflow(work: Path) -> dict:
    from negflow.search import search_shard

    settings = {"candidates": K, "index": "flat", "device": "cpu"}
    counts = search_shard(
        [str(work / "corpus-1-of-1.npy")],
        [str(work / "queries-1-of-1.npy")],
        str(work / "corpus"),
        str(work / "queries"),
        str(work / "qrels"),
        settings,
        BATCH,
        str(work / "candidates.parquet"),
    )
    return {"candidates": counts["candidates"]}


def run_faiss_in_memory(work: Path) -> dict:
    import faiss

    corpus = np.load(work / "corpus-1-of-1.npy")
    queries = np.load(work / "queries-1-of-1.npy")
    index = faiss.IndexFlatIP(DIM)
    index.add(corpus)
    del corpus
    found = 0
    for start in range(0, len(queries), BATCH):
        _, rows = index.search(queries[start : start + BATCH], K + 1)
        found += int((rows >= 0).sum())
    return {"candidates": found}


def child(kind: str, work: Path) -> None:
    start = time.perf_counter()
    result = {"negflow": run_negflow, "faiss": run_faiss_in_memory}[kind](work)
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def measure(kind: str, work: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--workdir", str(work)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/negflow-bench-memory")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--child", choices=["negflow", "faiss"], help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code path only")
    args = parser.parse_args()
    if args.smoke:
        args.docs, args.queries = 5000, 300
    if args.child:
        child(args.child, Path(args.workdir))
        return
    work = Path(args.workdir) / f"{args.docs}x{args.queries}"
    work.mkdir(parents=True, exist_ok=True)
    make_inputs(work, args.docs, args.queries)
    matrix_mb = args.docs * DIM * 4 / 2**20
    negflow, faiss_flat = measure("negflow", work), measure("faiss", work)

    print(f"\n{args.docs:,} x {DIM} corpus embeddings ({matrix_mb:,.0f} MB float32), {args.queries:,} queries, top-{K}")
    print(f"{'search':52s} {'peak RSS MB':>12s} {'x matrix':>9s} {'seconds':>8s}")
    for name, r in (
        ("negflow search stage (streamed, flat)", negflow),
        ("FAISS IndexFlatIP in memory (baseline)", faiss_flat),
    ):
        print(f"{name:52s} {r['peak_rss_mb']:12,.0f} {r['peak_rss_mb'] / matrix_mb:9.2f} {r['seconds']:8.1f}")
    print(
        f"\nnegflow peak RSS / embedding matrix: {negflow['peak_rss_mb'] / matrix_mb:.2f}x (target <= 1.5x); "
        f"/ baseline: {negflow['peak_rss_mb'] / faiss_flat['peak_rss_mb']:.2f}x; "
        f"time / baseline: {negflow['seconds'] / faiss_flat['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
