"""Peak memory of export_negatives as the queries grow: it must stay flat, not grow with queries x candidates.

Synthetic stage outputs for a fixed corpus (`--docs` passages, random 384-d unit vectors, a prepared corpus
folder) and two query counts (`--queries`, default 100,000 and 300,000), each query with one positive and
100 candidates, cross-encoder scores for every pair: the files search, merge and score write, in their
schemas and order. `negflow.export.export_negatives` (default selection, cross-encoder scores) runs on each
in a child process; printed: its wall time and its own peak RSS (VmHWM), and the ratio of the two peaks, with
the target (within 1.2x).

Usage: python bench/export_memory.py [--docs 300000] [--queries 100000 300000] [--workdir /tmp/negflow-bench-export]
       python bench/export_memory.py --smoke   # 2,000 passages, 300 and 600 queries: the code path only
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
sys.path.insert(0, str(REPO / "scripts"))

DIM = 384
CANDIDATES = 100

STAGE = """
import json, sys, time
sys.path[:0] = [{scripts!r}, {bench!r}]
from process_memory import peak_rss_mb
from negflow.calibration import calibrate
from negflow.candidates import Candidates
from negflow.export import export_negatives
from negflow.selection import SelectionSettings
d = {folder!r}
start = time.perf_counter()
inputs = dict(
    candidates=d + "/candidates.parquet", qrels=d + "/qrels.parquet", corpus=[{corpus!r}],
    queries=[d + "/queries-1-of-1.npy"], corpus_dir={corpus_dir!r},
)
if {scores!r}:
    inputs["scores"] = d + "/pair_scores.parquet"
candidates = Candidates.from_inputs(inputs, {{"selection_score": "auto"}})
if {stage!r} == "calibrate":
    result = calibrate(candidates, SelectionSettings(), 0.05)
    summary = {{"evidence": result["evidence"][0], "choice": result["choice"]["name"]}}
else:
    report = export_negatives(candidates, SelectionSettings(), d + "/negatives.jsonl", d + "/selection.json", {{}})
    summary = report["counts"]
peak_mb = peak_rss_mb()
print(json.dumps({{"seconds": time.perf_counter() - start, "peak_mb": peak_mb, "summary": summary}}))
"""


def run_stage(stage: str, folder: Path, root: Path, scores: bool) -> dict:
    """`export` (export_negatives, the default selection) or `calibrate` (fn_budget 0.05) on the synthetic
    files of `folder` in a child process (with CE scores or not): its seconds, peak RSS and summary."""
    code = STAGE.format(
        scripts=str(REPO / "scripts"),
        bench=str(REPO / "bench"),
        folder=str(folder),
        corpus=str(root / "corpus-1-of-1.npy"),
        corpus_dir=str(root / "corpus"),
        scores=scores,
        stage=stage,
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{stage} on {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def unit_rows(rng: np.random.Generator, n: int, path: Path) -> None:
    """n random unit vectors as a .npy, written in blocks."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in range(0, n, 65_536):
        block = rng.standard_normal((min(65_536, n - start), DIM), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    out.flush()


def write_corpus(root: Path, docs: int, rng: np.random.Generator) -> None:
    import datasets
    import pyarrow as pa

    ids = pa.array([f"d{i}" for i in range(docs)])
    texts = pa.array([f"passage {i} " + "text " * (i % 50) for i in range(docs)])
    table = pa.table({"id": ids, "text": texts})
    datasets.Dataset(datasets.table.InMemoryTable(table)).save_to_disk(str(root / "corpus"))
    unit_rows(rng, docs, root / "corpus-1-of-1.npy")


def write_queries(
    folder: Path, queries: int, docs: int, rng: np.random.Generator, two_positives_every: int | None = None
) -> None:
    """Candidates (query order, rank order), qrels with one positive each (two for every
    `two_positives_every`-th query), and CE scores of every pair."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from negflow.score import SCORES_SCHEMA
    from negflow.search import CANDIDATES_SCHEMA

    folder.mkdir(parents=True, exist_ok=True)
    unit_rows(rng, queries, folder / "queries-1-of-1.npy")
    positive = rng.integers(0, docs, queries)
    block = 20_000
    with (
        pq.ParquetWriter(folder / "candidates.parquet", CANDIDATES_SCHEMA) as candidates,
        pq.ParquetWriter(folder / "pair_scores.parquet", SCORES_SCHEMA) as scores,
    ):
        for start in range(0, queries, block):
            q = np.arange(start, min(start + block, queries))
            rows = rng.integers(0, docs, (len(q), CANDIDATES))
            cos = np.sort(rng.uniform(0.2, 0.8, (len(q), CANDIDATES)).astype(np.float32), axis=1)[:, ::-1]
            query_row = np.repeat(q, CANDIDATES)
            candidates.write_table(
                pa.table(
                    {
                        "query_id": pa.array([f"q{i}" for i in query_row.tolist()]),
                        "doc_id": pa.array([f"d{i}" for i in rows.ravel().tolist()]),
                        "query_row": query_row.astype(np.int32),
                        "doc_row": rows.ravel(),
                        "rank": np.tile(np.arange(1, CANDIDATES + 1, dtype=np.int32), len(q)),
                        "cosine": cos.ravel(),
                    },
                    schema=CANDIDATES_SCHEMA,
                )
            )
            pairs = np.unique(np.c_[np.r_[query_row, q], np.r_[rows.ravel(), positive[q]]], axis=0)
            ce = rng.uniform(0, 1, len(pairs)).astype(np.float32)
            ce[np.isin(pairs[:, 0] * docs + pairs[:, 1], q * docs + positive[q])] = 0.99
            scores.write_table(pa.table([pairs[:, 0].astype(np.int32), pairs[:, 1], ce], schema=SCORES_SCHEMA))
    query_rows, doc_rows = np.arange(queries), positive
    if two_positives_every:
        second = np.arange(0, queries, two_positives_every)
        query_rows = np.r_[query_rows, second]
        doc_rows = np.r_[doc_rows, (positive[second] + 1) % docs]  # no CE score: a cosine-selected run only
        order = np.argsort(query_rows, kind="stable")
        query_rows, doc_rows = query_rows[order], doc_rows[order]
    n = len(query_rows)
    qrels = {
        "query_id": pa.array([f"q{i}" for i in query_rows.tolist()]),
        "doc_id": pa.array([f"d{i}" for i in doc_rows.tolist()]),
        "query_row": pa.array(query_rows, pa.int32()),
        "doc_row": pa.array(doc_rows, pa.int64()),
        "score": pa.array(np.ones(n), pa.int32()),
        "positive": pa.array(np.ones(n, bool)),
        "cosine": pa.array(rng.uniform(0.75, 0.95, n) if two_positives_every else np.full(n, 0.9), pa.float32()),
    }
    pq.write_table(pa.table(qrels), folder / "qrels.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=300_000)
    parser.add_argument("--queries", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--workdir", default="/tmp/negflow-bench-export")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code path only")
    args = parser.parse_args()
    if args.smoke:
        args.docs, args.queries = 2000, [300, 600]
    root = Path(args.workdir) / f"docs-{args.docs}"
    rng = np.random.default_rng(0)
    if not (root / "corpus-1-of-1.npy").exists():
        root.mkdir(parents=True, exist_ok=True)
        write_corpus(root, args.docs, rng)
    results = {}
    for n in args.queries:
        folder = root / f"queries-{n}"
        if not (folder / "pair_scores.parquet").exists():
            start = time.perf_counter()
            write_queries(folder, n, args.docs, np.random.default_rng(n))
            print(f"wrote {n:,} queries x {CANDIDATES} candidates in {time.perf_counter() - start:.0f} s")
        results[n] = run_stage("export", folder, root, scores=True)
    print(f"\ncorpus {args.docs:,} passages x {DIM}; {CANDIDATES} candidates and 1 positive per query; CE scores")
    print(f"{'queries':>10s} {'seconds':>8s} {'queries/s':>10s} {'peak RSS MB':>12s} {'negatives':>10s}")
    for n, r in results.items():
        rate, negatives = n / r["seconds"], r["summary"]["negatives"]
        print(f"{n:10,d} {r['seconds']:8.1f} {rate:10,.0f} {r['peak_mb']:12,.0f} {negatives:10,d}")
    if len(results) > 1:
        small, large = min(results), max(results)
        ratio = results[large]["peak_mb"] / results[small]["peak_mb"]
        verdict = "PASS" if ratio <= 1.2 else "FAIL"
        print(f"\npeak RSS at {large:,} / at {small:,} queries: {ratio:.2f}x (target <= 1.2x): {verdict}")


if __name__ == "__main__":
    main()
