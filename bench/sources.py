"""Candidate sources on densely judged data: the dense model alone, BM25 alone, and both fused, each mined by
the workflow with the default selection (and the fused pool with `selection: auto`).

Protocol (msmarco-two, as bench/calibration.py): ../shared/datasets/msmarco-subset, two relevant passages
(grade >= 2) shown to the miner per judged query, chosen by a seeded hash; the other relevant passages stay
hidden. all-MiniLM-L6-v2, 10 negatives, 100 candidates per source. For each run:
- false negatives: the share of negatives that are hidden relevant passages (grade >= 2 in the full qrels);
- judged non-relevant: the share graded below 2 by the assessors. A judged passage is one some system
  ranked high, so this is the share of negatives that are both hard and known safe;
- median rank of the negatives in the run's candidate list (the fused rank where sources are fused) and
  their median cosine; negatives; queries left short;
- for the fused runs, the same per source that returned the negative (a negative both returned counts
  under both).

Usage: python bench/sources.py [--datasets ../shared/datasets] [--workdir /tmp/negflow-bench-sources]
       python bench/sources.py --smoke   # a few queries of msmarco-subset: checks the code path only
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "bench")]

from calibration import MODEL, NEGATIVES, read_qrels, run, show  # noqa: E402
from selection_vs_anchors import msmarco_subset_and_workdir  # noqa: E402

from negflow import layout  # noqa: E402
from negflow.negatives import read_negatives  # noqa: E402

RUNS = {  # dataset name: (candidate_sources, selection)
    "dense": (["dense"], "fixed"),
    "bm25": (["bm25"], "fixed"),
    "dense+bm25": (["dense", "bm25"], "fixed"),
    "dense+bm25, auto 0.05": (["dense", "bm25"], "auto"),
}


def dataset_name(run_name: str) -> str:
    return run_name.replace("+", "_").replace(", ", "-").replace(" ", "_")


def ranks_of(workdir: Path, name: str, fused: bool) -> dict[tuple[str, str], int]:
    """(query id, doc id) -> rank in the run's candidate list: the fused one, or the dense search's."""
    pattern = layout.fuse_candidates.candidates if fused else layout.merge_candidates.candidates
    table = pq.read_table(workdir / layout.run_file(pattern, name), columns=["query_id", "doc_id", "rank"])
    pairs = zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True)
    return dict(zip(pairs, table["rank"].to_pylist(), strict=True))


def measure(workdir: Path, name: str, fused: bool, grades: dict[str, dict[str, int]]) -> dict:
    """What the run's negatives are: false, judged non-relevant, rank, cosine; overall and by source."""
    ranks = ranks_of(workdir, name, fused)
    rows = []  # (source or "all", false, judged non-relevant, rank, cosine)
    for record in read_negatives(workdir / layout.run_file(layout.export_negatives.negatives, name)):
        judged = grades.get(record.query, {})
        first = record.n_positives
        sources = record.doc_sources or [["dense"]] * len(record.docs)
        for doc, cos, found in zip(record.docs[first:], record.query_doc_cos[first:], sources[first:], strict=True):
            grade = judged.get(doc)
            fact = (grade is not None and grade >= 2, grade is not None and grade < 2, ranks[(record.query, doc)], cos)
            rows += [("all", *fact)] + [(source, *fact) for source in found]
    report = json.loads((workdir / layout.run_file(layout.export_negatives.report, name)).read_text())
    out = {}
    for source in dict.fromkeys(r[0] for r in rows):
        mine = np.array([r[1:] for r in rows if r[0] == source], dtype=np.float64)
        out[source] = {
            "negatives": len(mine),
            "false": mine[:, 0].mean(),
            "judged_non_relevant": mine[:, 1].mean(),
            "median_rank": float(np.median(mine[:, 2])),
            "median_cosine": float(np.median(mine[:, 3])),
        }
    out["all"]["short"] = report["counts"]["queries_short"]
    return out


def main() -> None:
    data, workdir = msmarco_subset_and_workdir(__doc__.split("\n")[0], "/tmp/negflow-bench-sources")
    qrels = read_qrels(data / "qrels" / "test.tsv")
    show(qrels, 2, 0.0, 2, workdir / "shown.tsv")
    grades: dict[str, dict[str, int]] = {}
    for q, d, s in qrels:
        grades.setdefault(q, {})[d] = s
    common = {
        "corpus": str(data / "corpus.jsonl"),
        "queries": str(data / "queries.jsonl"),
        "qrels": str(workdir / "shown.tsv"),
        "embedding": MODEL,
        "min_positive_score": 2,
        "num_negatives": NEGATIVES,
        "train_formats": [],
    }
    runs = {"dense+bm25": RUNS["dense+bm25"]} if "--smoke" in sys.argv else RUNS  # smoke: one run has every rule
    blocks = {
        dataset_name(name): {**common, "candidate_sources": sources, "selection": selection, "fn_budget": 0.05}
        for name, (sources, selection) in runs.items()
    }
    run(workdir, blocks)
    print(f"\nmsmarco-two: {len(grades)} judged queries, two relevant passages shown per query, {NEGATIVES} negatives")
    print(
        f"{'candidate sources':28s} {'negatives from':>15s} {'negatives':>10s} {'false':>7s} {'judged non-rel':>15s} "
        f"{'median rank':>12s} {'median cos':>11s} {'short':>6s}"
    )
    results = {}
    for name, (sources, _) in runs.items():
        results[name] = measure(workdir, dataset_name(name), sources != ["dense"], grades)
        for source, r in results[name].items():
            short = str(r["short"]) if "short" in r else ""
            print(
                f"{name if source == 'all' else '':28s} {source:>15s} {r['negatives']:10d} {100 * r['false']:6.1f}% "
                f"{100 * r['judged_non_relevant']:14.1f}% {r['median_rank']:12.1f} {r['median_cosine']:11.3f} "
                f"{short:>6s}"
            )
    if "dense" not in results:
        return
    both, dense = results["dense+bm25"]["all"], results["dense"]["all"]
    print(
        f"\ndense+bm25 vs dense: false negatives {100 * both['false']:.1f}% vs {100 * dense['false']:.1f}%, judged "
        f"non-relevant {100 * both['judged_non_relevant']:.1f}% vs {100 * dense['judged_non_relevant']:.1f}% "
        "(the issue's targets on other data: false <= 6%, judged non-relevant >= 40%)"
    )


if __name__ == "__main__":
    main()
