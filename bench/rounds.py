"""Rounds on SciFact: does mining again with the trained model train a better model than training the same
model longer on the first round's negatives?

Protocol (issue 37), per seed (the dataset's `seed`: it decides the hidden positives, round 1's sampling and
every training): SciFact `train` mined by the workflow with all-MiniLM-L6-v2, `audit_holdout` (one positive
of each multi-positive query shown, the others hidden), `rounds: 3` and `round_training: continue`, run
only as far as round 3's model (round 3's own mining is not needed). The models, each scored by nDCG@10 on
SciFact `test` (exact search over the whole corpus):
- base: all-MiniLM-L6-v2 as published;
- round-1 model: trained on round 1's negatives (the workflow's `rounds/2/model`);
- round 2 (continue): the round-1 model trained on the negatives it mined itself (`rounds/3/model`);
- control: the round-1 model trained again, with the same settings, on round 1's negatives. Round 2 and
  the control start from the same model and train the same way on rows of the same kind; the negatives
  differ, and so may the number of rows (a query needs `finetune_negatives` negatives to make a row; both
  counts are printed), so their gap is what re-mining adds.
Also each round's hidden-positive share (its audit: among the negatives of the queries that have hidden
positives, the share that are hidden positives): a trained model ranks hidden positives higher, and the
filters must still keep them out.

Usage: python bench/rounds.py [--datasets ../shared/datasets] [--workdir /tmp/negflow-bench-rounds]
       [--seeds 42,1]     # about an hour a seed on 2 CPU cores, minutes on a GPU
       python bench/rounds.py --smoke   # a few queries, one seed: checks the code path only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "scripts"), str(REPO / "bench")]

from calibration import metrics_on_qrels, run, scifact_train  # noqa: E402
from selection_vs_anchors import smoke_subset  # noqa: E402

from negflow import layout  # noqa: E402
from negflow.audit import own_strategy  # noqa: E402
from negflow.rounds import round_dataset  # noqa: E402

MODELS = ("base", "round-1 model", "round 2, continue", "control: round 1 negatives again")


def block(data: Path, seed: int, smoke: bool) -> dict:
    """The dataset block of one seed's run."""
    settings = scifact_train(data) | {"audit_holdout": True, "train_formats": [], "seed": seed}
    settings |= {"rounds": 3, "round_training": "continue"}
    return settings | ({"finetune_batch_size": 4, "candidates": 30} if smoke else {})


def measure(workdir: Path, dataset: str, settings: dict, test_qrels: Path) -> dict:
    """nDCG@10 of the four models, the training rows of round 2 and of the control, and each round's
    hidden-positive share."""
    from negflow.config import dataset_settings, load_schema
    from negflow.finetune import train, training_rows
    from negflow.models import BatchLimits, load_embedding_model, pick_device

    resolved = dataset_settings({"datasets": {dataset: settings}}, load_schema(str(REPO / "config/schema.yaml")), None)
    resolved = resolved[dataset]
    results = workdir / "results" / dataset
    device, limits = pick_device("auto"), BatchLimits(64)  # a GPU where there is one
    round_1_model = str(workdir / layout.run_file(layout.train_round.model, round_dataset(dataset, 2)))
    models = {
        "base": resolved["embedding"],
        "round-1 model": round_1_model,
        "round 2, continue": str(workdir / layout.run_file(layout.train_round.model, round_dataset(dataset, 3))),
    }
    ndcg = {}
    for name, ref in models.items():
        model = load_embedding_model(ref, device, resolved["embedding_seq_len"])
        ndcg[name] = metrics_on_qrels(model, workdir, dataset, settings["queries"], test_qrels, device, limits)[
            "ndcg@10"
        ]
    negatives = {
        r: workdir / layout.run_file(layout.export_negatives.negatives, round_dataset(dataset, r)) for r in (1, 2)
    }
    rows = {
        r: training_rows(
            str(path), str(results / "prepare/corpus"), str(results / "prepare/queries"), resolved["finetune_negatives"]
        )
        for r, path in negatives.items()
    }
    with tempfile.TemporaryDirectory() as tmp:  # the control: train_round's training, from the round-1 model
        control = train(
            rows[1], resolved | {"embedding": round_1_model, "embedding_revision": None}, device, tmp, limits
        )
    name = "control: round 1 negatives again"
    ndcg[name] = metrics_on_qrels(control, workdir, dataset, settings["queries"], test_qrels, device, limits)["ndcg@10"]
    hidden = {}
    for r in (1, 2):
        audit = json.loads((workdir / layout.run_file(layout.audit.report, round_dataset(dataset, r))).read_text())
        hidden[r] = own_strategy(audit)["false_negative_rate"]
    return {"ndcg": ndcg, "rows": {r: len(rows[r]["anchor"]) for r in rows}, "hidden": hidden}


def report(measured: dict[int, dict], test_qrels: Path) -> None:
    seeds = list(measured)
    print(f"\nSciFact rounds (all-MiniLM-L6-v2, audit_holdout, round_training continue), nDCG@10 on {test_qrels.stem}:")
    print(f"  {'model':36s} " + " ".join(f"{'seed ' + str(s):>8s}" for s in seeds) + f" {'mean':>8s}")
    for name in MODELS:
        values = [measured[s]["ndcg"][name] for s in seeds]
        print(f"  {name:36s} " + " ".join(f"{v:8.4f}" for v in values) + f" {np.mean(values):8.4f}")
    gain = [measured[s]["ndcg"]["round 2, continue"] - measured[s]["ndcg"][MODELS[3]] for s in seeds]
    spread = [measured[s]["ndcg"]["round 2, continue"] for s in seeds]
    print(
        "re-mining (round 2 - control): " + " ".join(f"{g:+.4f}" for g in gain) + f", mean {np.mean(gain):+.4f}; "
        f"round 2's spread across seeds {max(spread) - min(spread):.4f}"
    )
    for s in seeds:
        hidden, rows = measured[s]["hidden"], measured[s]["rows"]
        shares = ", ".join(f"round {r} {'n/a' if v is None else f'{100 * v:.1f}%'}" for r, v in hidden.items())
        print(
            f"seed {s}: hidden positives among the negatives: {shares}; training rows: round 1 {rows[1]}, "
            f"round 2 {rows[2]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--datasets", default=os.environ.get("NEGFLOW_SHARED_DATASETS", REPO.parent / "shared/datasets")
    )
    parser.add_argument("--workdir", default="/tmp/negflow-bench-rounds")
    parser.add_argument("--seeds", default="42,1", help="training seeds, comma-separated")
    parser.add_argument("--smoke", action="store_true", help="a few queries, one seed: checks the code path only")
    args = parser.parse_args()
    data, workdir = Path(args.datasets) / "scifact", Path(args.workdir)
    if not data.is_dir():
        sys.exit(f"{data} not found: pass --datasets or set NEGFLOW_SHARED_DATASETS")
    workdir.mkdir(parents=True, exist_ok=True)
    seeds, test_qrels = [int(s) for s in args.seeds.split(",")], data / "qrels" / "test.tsv"
    if args.smoke:  # evaluated on the subset's own qrels
        data = smoke_subset(data, workdir / "smoke-data", "train", 8, 40)
        seeds, test_qrels = seeds[:1], data / "qrels" / "train.tsv"
    datasets = {f"scifact-rounds-{seed}": block(data, seed, args.smoke) for seed in seeds}
    targets = [
        workdir / layout.run_file(entry, round_dataset(name, r))
        for name in datasets
        for entry, r in ((layout.train_round.model, 3), (layout.audit.report, 1), (layout.audit.report, 2))
    ]
    run(workdir, datasets, [str(t.relative_to(workdir)) for t in targets])
    report(
        {
            seed: measure(workdir, f"scifact-rounds-{seed}", datasets[f"scifact-rounds-{seed}"], test_qrels)
            for seed in seeds
        },
        test_qrels,
    )


if __name__ == "__main__":
    main()
