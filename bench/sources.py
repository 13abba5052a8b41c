"""Candidate sources on judged data: the dense model alone, BM25 alone, and both fused, each mined by the
workflow with the default selection (and the fused pool with `selection: auto`).

Protocols (all-MiniLM-L6-v2, 100 candidates per source):
- `msmarco-two` (as bench/calibration.py): ../shared/datasets/msmarco-subset, two relevant passages
  (grade >= 2) shown to the miner per judged query, chosen by a seeded hash; the other relevant passages
  stay hidden. 10 negatives.
- `scifact-holdout` (--scifact): SciFact `train` mined with `audit_holdout` (one positive of each
  multi-positive query shown, the others hidden), the default number of negatives; with --finetune,
  all-MiniLM-L6-v2 is fine-tuned on each run's negatives (the finetune rule's training: one epoch, 3
  negatives a row) once per training seed (--seeds), nDCG@10 on SciFact `test`, on a GPU where there is
  one. auto has no multi-positive query to calibrate on under `audit_holdout`, so SciFact has no auto row.
For each run:
- false negatives: the share of negatives that are hidden relevant passages (on scifact-holdout among
  the negatives of the queries that have hidden ones, as the audit counts);
- judged non-relevant (msmarco-two): the share graded below 2 by the assessors. A judged passage is one
  some system ranked high, so this is the share of negatives that are both hard and known safe;
- median rank of the negatives in the run's candidate list (the fused rank where sources are fused) and
  their median cosine; negatives; queries left short;
- for the fused runs, the same per source that returned the negative (a negative both returned counts
  under both);
- for msmarco-two's dense+bm25 run, the candidates the default filters leave (the sampler's pool) by the
  sources that returned them, and how well cosine, cosine to a positive and fused rank tell its hidden
  positives from its judged non-relevant passages (AUC).

Usage: python bench/sources.py [--datasets ../shared/datasets] [--workdir /tmp/negflow-bench-sources]
       [--protocols msmarco-two,scifact-holdout] [--finetune [--seeds 42,1]]
       python bench/sources.py --smoke   # a few queries of each set, one fine-tune: checks the code path only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "bench")]

from calibration import MODEL, NEGATIVES, finetune_seeds, read_qrels, run, scifact_train, show  # noqa: E402
from selection_vs_anchors import smoke_subset  # noqa: E402

from negflow import layout  # noqa: E402
from negflow.candidates import Candidates  # noqa: E402
from negflow.judgments import read_holdout, relevant_docs  # noqa: E402
from negflow.negatives import read_negatives  # noqa: E402
from negflow.selection import SelectionSettings, filter_mask  # noqa: E402

RUNS = {  # run name: (candidate_sources, selection)
    "dense": (["dense"], "fixed"),
    "bm25": (["bm25"], "fixed"),
    "dense+bm25": (["dense", "bm25"], "fixed"),
    "dense+bm25, auto 0.05": (["dense", "bm25"], "auto"),
}
SMOKE_RUN = "dense+bm25"  # the one run of --smoke: it has every rule
PROTOCOLS = ("msmarco-two", "scifact-holdout")


def dataset_name(protocol: str, run_name: str) -> str:
    return f"{protocol}-" + run_name.replace("+", "_").replace(", ", "-").replace(" ", "_")


def ranks_of(workdir: Path, name: str, fused: bool) -> dict[tuple[str, str], int]:
    """(query id, doc id) -> rank in the run's candidate list: the fused one, or the dense search's."""
    pattern = layout.fuse_candidates.candidates if fused else layout.merge_candidates.candidates
    table = pq.read_table(workdir / layout.run_file(pattern, name), columns=["query_id", "doc_id", "rank"])
    pairs = zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True)
    return dict(zip(pairs, table["rank"].to_pylist(), strict=True))


Judge = Callable[[str, str], bool | None]  # (query id, doc id) -> whether the document is so; None: unknown


def measure(workdir: Path, name: str, fused: bool, is_false: Judge, is_judged_safe: Judge | None) -> dict:
    """What the run's negatives are: false, judged non-relevant, rank, cosine; overall and by source."""
    ranks = ranks_of(workdir, name, fused)
    rows = []  # (source or "all", false, judged non-relevant, rank, cosine)
    for record in read_negatives(workdir / layout.run_file(layout.export_negatives.negatives, name)):
        first = record.n_positives
        sources = record.doc_sources or [["dense"]] * len(record.docs)
        for doc, cos, found in zip(record.docs[first:], record.query_doc_cos[first:], sources[first:], strict=True):
            safe = is_judged_safe(record.query, doc) if is_judged_safe else False
            false = is_false(record.query, doc)
            fact = (np.nan if false is None else false, safe, ranks[(record.query, doc)], cos)
            rows += [("all", *fact)] + [(source, *fact) for source in found]
    report = json.loads((workdir / layout.run_file(layout.export_negatives.report, name)).read_text())
    out = {}
    for source in dict.fromkeys(r[0] for r in rows):
        mine = np.array([r[1:] for r in rows if r[0] == source], dtype=np.float64)
        out[source] = {
            "negatives": len(mine),
            "false": np.nanmean(mine[:, 0]) if (~np.isnan(mine[:, 0])).any() else np.nan,
            "judged_non_relevant": mine[:, 1].mean() if is_judged_safe else None,
            "median_rank": float(np.median(mine[:, 2])),
            "median_cosine": float(np.median(mine[:, 3])),
        }
    out["all"]["short"] = report["counts"]["queries_short"]
    return out


def auc(higher: np.ndarray, lower: np.ndarray) -> float:
    """The chance that a value drawn from `higher` exceeds one drawn from `lower` (ties count half); NaN
    where either is empty."""
    if not len(higher) or not len(lower):
        return np.nan
    lower = np.sort(lower)
    below = np.searchsorted(lower, higher, side="left")
    tied = np.searchsorted(lower, higher, side="right") - below
    return float((below + tied / 2).sum() / (len(higher) * len(lower)))


def survivors(workdir: Path, name: str, grades: dict, is_false: Judge, is_judged_safe: Judge) -> None:
    """What the default filters leave of a fused run's candidates, by the sources that returned them (the
    pool the sampler draws from), and how well the signals a selection can read tell its hidden positives
    from its judged non-relevant ones: where both are scarce in one part of the pool and plentiful in
    another, no rule over these signals makes negatives harder without making them less safe."""
    report = json.loads((workdir / layout.run_file(layout.export_negatives.report, name)).read_text())
    settings = SelectionSettings.from_settings(report["settings"])
    kind, false, safe, cosine, doc_cos, rank = [], [], [], [], [], []
    candidates = Candidates.of_run(workdir, name)
    dense, bm25 = (candidates.source_names.index(source) for source in ("dense", "bm25"))
    for query in candidates:
        if query.query_id not in grades:  # not a judged query
            continue
        scores = query.scores("cosine")
        keep = np.flatnonzero(filter_mask(scores, settings)[0])
        returned = query.cand_sources[keep]
        both, dense_only = returned[:, dense] & returned[:, bm25], returned[:, dense] & ~returned[:, bm25]
        kind += np.where(both, "both", np.where(dense_only, "dense only", "bm25 only")).tolist()
        false += [is_false(query.query_id, query.cand_ids[i]) for i in keep]
        safe += [is_judged_safe(query.query_id, query.cand_ids[i]) for i in keep]
        cosine.append(query.cand_cos[keep])
        doc_cos.append(scores.positive_cos[keep].max(axis=1))
        rank.append(query.cand_ranks[keep])
    kind, false, safe = np.array(kind), np.array(false, dtype=bool), np.array(safe, dtype=bool)
    print(f"\n{name}: candidates left by the default filters, by the sources that returned them")
    print(f"{'returned by':12s} {'candidates':>11s} {'false':>8s} {'judged non-rel':>15s}")
    for part in ("both", "dense only", "bm25 only", "all"):
        mine = np.ones(len(kind), dtype=bool) if part == "all" else kind == part
        shares = [f"{100 * x[mine].mean():.1f}%" if mine.any() else "n/a" for x in (false, safe)]
        print(f"{part:12s} {mine.sum():11d} {shares[0]:>8s} {shares[1]:>15s}")
    signals = {
        "cosine": np.concatenate(cosine),
        "cosine to a positive": np.concatenate(doc_cos),
        "fused rank (lower)": -np.concatenate(rank).astype(np.float64),
    }
    print(
        f"hidden positives ({false.sum()}) against judged non-relevant ({safe.sum()}) among them, AUC: "
        + ", ".join(f"{signal} {auc(values[false], values[safe]):.2f}" for signal, values in signals.items()).replace(
            "nan", "n/a"
        )
    )


def print_table(title: str, results: dict[str, dict]) -> None:
    print(f"\n{title}")
    print(
        f"{'candidate sources':28s} {'negatives from':>15s} {'negatives':>10s} {'false':>8s} {'judged non-rel':>15s} "
        f"{'median rank':>12s} {'median cos':>11s} {'short':>6s}"
    )
    for name, by_source in results.items():
        for source, r in by_source.items():
            short = str(r["short"]) if "short" in r else ""
            safe = "-" if r["judged_non_relevant"] is None else f"{100 * r['judged_non_relevant']:.1f}%"
            false = "n/a" if np.isnan(r["false"]) else f"{100 * r['false']:.2f}%"  # n/a: no query has hidden ones
            print(
                f"{name if source == 'all' else '':28s} {source:>15s} {r['negatives']:10d} {false:>8s} "
                f"{safe:>15s} {r['median_rank']:12.1f} {r['median_cosine']:11.3f} {short:>6s}"
            )


def msmarco_judges(data: Path) -> tuple[dict[str, dict[str, int]], Judge, Judge]:
    """msmarco-subset's grades by query, and the two judges: a hidden positive (graded >= 2: the shown ones
    are never candidates), and judged non-relevant (graded below 2)."""
    grades: dict[str, dict[str, int]] = {}
    for q, d, s in read_qrels(data / "qrels" / "test.tsv"):
        grades.setdefault(q, {})[d] = s

    def is_false(q: str, d: str) -> bool:
        return grades.get(q, {}).get(d, 0) >= 2

    def is_judged_safe(q: str, d: str) -> bool:
        return grades.get(q, {}).get(d, 2) < 2

    return grades, is_false, is_judged_safe


def msmarco_two(data: Path, workdir: Path, runs: dict) -> tuple[dict, Callable[[], dict]]:
    """The msmarco-two dataset blocks, and what measures them once mined."""
    show(read_qrels(data / "qrels" / "test.tsv"), 2, 0.0, 2, workdir / "shown.tsv")
    grades, is_false, is_judged_safe = msmarco_judges(data)
    common = {
        "corpus": str(data / "corpus.jsonl"),
        "queries": str(data / "queries.jsonl"),
        "qrels": str(workdir / "shown.tsv"),
        "embedding": MODEL,
        "min_positive_score": 2,
        "num_negatives": NEGATIVES,
        "train_formats": [],
    }
    blocks = {
        dataset_name("msmarco-two", name): common
        | {"candidate_sources": sources, "selection": selection, "fn_budget": 0.05}
        for name, (sources, selection) in runs.items()
    }

    def results() -> dict:
        print(f"\nmsmarco-two: {len(grades)} judged queries, two relevant passages shown per query")
        return {
            name: measure(workdir, dataset_name("msmarco-two", name), sources != ["dense"], is_false, is_judged_safe)
            for name, (sources, _) in runs.items()
        }

    return blocks, results


def scifact_holdout(data: Path, workdir: Path, runs: dict) -> tuple[dict, Callable[[], dict]]:
    """The scifact-holdout dataset blocks (no auto: nothing to calibrate on), and what measures them."""
    runs = {name: run for name, run in runs.items() if run[1] == "fixed"}
    common = scifact_train(data) | {"audit_holdout": True, "train_formats": []}
    blocks = {
        dataset_name("scifact-holdout", name): common | {"candidate_sources": sources}
        for name, (sources, _) in runs.items()
    }

    def results() -> dict:
        out = {}
        for name, (sources, _) in runs.items():
            dataset = dataset_name("scifact-holdout", name)
            hidden = relevant_docs(read_holdout(str(workdir / layout.run_file(layout.prepare.holdout, dataset))), 1)
            is_false = lambda q, d, hidden=hidden: d in hidden[q] if q in hidden else None  # noqa: E731
            out[name] = measure(workdir, dataset, sources != ["dense"], is_false, None)
        print(f"\nscifact-holdout: {len(hidden)} queries with hidden positives")
        return out

    return blocks, results


def finetune(data: Path, workdir: Path, runs: dict, seeds: list[int], test_qrels: Path) -> None:
    """nDCG@10 on `test_qrels` of the model fine-tuned on each scifact-holdout run's negatives, per seed."""
    negatives = {}
    for name, (_, selection) in runs.items():
        if selection == "fixed":
            dataset = dataset_name("scifact-holdout", name)
            negatives[name] = (dataset, workdir / layout.run_file(layout.export_negatives.negatives, dataset))
    finetune_seeds(workdir, negatives, scifact_train(data), seeds, test_qrels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--datasets", default=os.environ.get("NEGFLOW_SHARED_DATASETS", REPO.parent / "shared/datasets")
    )
    parser.add_argument("--workdir", default="/tmp/negflow-bench-sources")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--finetune", action="store_true", help="scifact-holdout: the fine-tune proof (an hour on CPU)")
    parser.add_argument("--seeds", default="42,1", help="with --finetune: training seeds, comma-separated")
    parser.add_argument("--smoke", action="store_true", help="a few queries of each set: checks the code path only")
    args = parser.parse_args()
    datasets, workdir = Path(args.datasets), Path(args.workdir)
    protocols = args.protocols.split(",")
    if unknown := set(protocols) - set(PROTOCOLS):
        sys.exit(f"unknown protocols {sorted(unknown)}: choose from {', '.join(PROTOCOLS)}")
    sets = {"msmarco-two": ("msmarco-subset", "test"), "scifact-holdout": ("scifact", "train")}
    data = {p: datasets / sets[p][0] for p in protocols}
    for folder in data.values():
        if not folder.is_dir():
            sys.exit(f"{folder} not found: pass --datasets or set NEGFLOW_SHARED_DATASETS")
    workdir.mkdir(parents=True, exist_ok=True)
    runs, seeds, test_qrels = RUNS, [int(s) for s in args.seeds.split(",")], data.get("scifact-holdout")
    if test_qrels:
        test_qrels = test_qrels / "qrels" / "test.tsv"
    if args.smoke:  # one run with every rule, one fine-tune evaluated on the subset's own qrels
        runs, seeds, args.finetune = {SMOKE_RUN: RUNS[SMOKE_RUN]}, seeds[:1], True
        for p, (queries, docs) in {"msmarco-two": (6, 150), "scifact-holdout": (8, 100)}.items():
            if p in protocols:
                data[p] = smoke_subset(data[p], workdir / "smoke-data" / p, sets[p][1], queries, docs)
        test_qrels = test_qrels and data["scifact-holdout"] / "qrels" / "train.tsv"
    built = {"msmarco-two": msmarco_two, "scifact-holdout": scifact_holdout}
    measured = {p: built[p](data[p], workdir, runs) for p in protocols}
    run(workdir, {name: block for blocks, _ in measured.values() for name, block in blocks.items()})
    for p, (_, results) in measured.items():
        by_run = results()
        print_table(f"{p}: all-MiniLM-L6-v2, 100 candidates per source, the default selection", by_run)
        if p == "msmarco-two" and "dense" in by_run:
            both, dense = by_run["dense+bm25"]["all"], by_run["dense"]["all"]
            print(
                f"\ndense+bm25 vs dense: false negatives {100 * both['false']:.1f}% vs {100 * dense['false']:.1f}%, "
                f"judged non-relevant {100 * both['judged_non_relevant']:.1f}% vs "
                f"{100 * dense['judged_non_relevant']:.1f}% (the issue's targets on other data: false <= 6%, judged "
                "non-relevant >= 40%)"
            )
        if p == "msmarco-two" and "dense+bm25" in by_run:
            survivors(workdir, dataset_name(p, "dense+bm25"), *msmarco_judges(data[p]))
    if args.finetune and "scifact-holdout" in protocols:
        finetune(data["scifact-holdout"], workdir, runs, seeds, test_qrels)


if __name__ == "__main__":
    main()
