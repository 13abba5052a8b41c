"""Mining rounds: round 2 trains on round 1's negatives and mines with the model it trained, in one DAG.

The tiny random-init model trains in seconds; the plan, the files and the provenance are what is checked,
not whether re-mining helps (bench/ measures that on real data)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import planned_jobs, snakemake, write_config
from kills import run_until_killed

from negflow.rounds import mined_by, prepared_by, round_datasets, rounded_pattern, training_start

ROUNDS = {"rounds": 2, "finetune_negatives": 2, "finetune_batch_size": 4, "train_formats": ["n-tuple"]}


def test_each_round_is_a_dataset_that_reads_its_datasets_prepare_and_trains_from_the_round_before():
    settings = {"rounds": 3, "embedding": "base-model", "embedding_revision": "v1", "round_training": "continue"}
    rounds = round_datasets({"d": settings, "plain": settings | {"rounds": 1}})
    assert sorted(rounds) == ["d/rounds/1", "d/rounds/2", "d/rounds/3"]  # one round: no round datasets
    assert rounds["d/rounds/1"]["embedding"] == "base-model"
    assert rounds["d/rounds/3"]["embedding"] == "results/d/rounds/3/model"
    datasets = {"d": settings, **rounds}
    assert mined_by(datasets, "d") == "d/rounds/3" and mined_by(datasets, "d/rounds/2") == "d/rounds/2"
    assert prepared_by(datasets, "d/rounds/2") == "d" and prepared_by(datasets, "d") == "d"
    assert training_start(datasets, "d/rounds/2") == {"embedding": "base-model", "embedding_revision": "v1"}
    round_2 = {"embedding": "results/d/rounds/2/model", "embedding_revision": None}
    assert training_start(datasets, "d/rounds/3") == round_2
    pattern = rounded_pattern(datasets | {"plain": settings | {"rounds": 1}, "d.x": settings})
    assert [name for name in ("d", "plain", "d/rounds/2", "d.x", "dax") if re.fullmatch(pattern, name)] == ["d", "d.x"]
    assert re.fullmatch(rounded_pattern({"plain": settings | {"rounds": 1}}), "plain") is None
    restart = {name: s | {"round_training": "restart"} for name, s in datasets.items()}
    assert training_start(restart, "d/rounds/3") == {"embedding": "base-model", "embedding_revision": "v1"}


def job_inputs(dry_run: str, rule: str) -> list[str]:
    """The input files of each job of `rule` in a dry run's job blocks."""
    return re.findall(rf"\nrule {rule}:\n    input: ([^\n]*)", dry_run)


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, dataset_block):
    """The fixture dataset mined in two rounds, run once for the module."""
    run = tmp_path_factory.mktemp("rounds")
    write_config(run, {"fx": {**dataset_block, **ROUNDS}})
    plan = snakemake(run, "-n")
    snakemake(run)
    return run, plan


@pytest.mark.slow
def test_the_plan_prepares_once_and_trains_round_2_on_round_1s_negatives(two_rounds):
    run, plan = two_rounds
    jobs = planned_jobs(plan)
    assert jobs["prepare"] == 1 and jobs["train_round"] == 1
    assert jobs["embed"] == jobs["search"] == 2  # one per round
    assert jobs["export_negatives"] == 2 and jobs["take_last_round"] == 1  # the dataset's own: round 2's, copied
    (training,) = job_inputs(plan.stdout, "train_round")
    assert "results/fx/rounds/1/negatives.jsonl" in training and "results/fx/prepare/corpus" in training
    embeds = job_inputs(plan.stdout, "embed")
    assert any("results/fx/rounds/2/model" in e for e in embeds)
    assert all("results/fx/prepare/corpus" in e for e in embeds)  # both rounds read the one prepare


@pytest.mark.slow
def test_the_datasets_files_are_the_last_rounds_and_say_which_model_mined_them(two_rounds, dataset_block):
    run, _ = two_rounds
    results = run / "results/fx"
    assert (results / "negatives.jsonl").read_bytes() == (results / "rounds/2/negatives.jsonl").read_bytes()
    assert (results / "rounds/1/negatives.jsonl").read_bytes() != (results / "rounds/2/negatives.jsonl").read_bytes()
    assert (results / "rounds/2/model/model.safetensors").is_file()
    provenance = {
        name: json.loads((results / name / "negatives.provenance.json").read_text())
        for name in ("rounds/1", "rounds/2", ".")
    }
    assert [provenance[name]["settings"]["round"] for name in ("rounds/1", "rounds/2", ".")] == [1, 2, 2]
    weights = {name: p["models"]["embedding"]["weights_sha256"] for name, p in provenance.items()}
    assert weights["rounds/1"] != weights["rounds/2"] == weights["."]
    assert provenance["."]["models"]["embedding"]["path"].endswith("results/fx/rounds/2/model")
    base = {"embedding": dataset_block["embedding"], "embedding_revision": None}
    assert provenance["."]["settings"]["round_base_model"] == base  # the configured model it began from
    assert "round_base_model" not in provenance["rounds/1"]["settings"]
    assert not (results / "rounds/2/prepare").exists()
    assert (results / "train/n-tuple.parquet").is_file()
    for name in ("audit.json", "selection.json", "negatives.provenance.json"):  # copied, not computed again
        assert (results / name).read_bytes() == (results / "rounds/2" / name).read_bytes()
    assert not (results / "rounds/1/train").exists()  # the training files are the dataset's, the last round's


@pytest.mark.slow
def test_the_rounds_summary_sets_the_rounds_side_by_side(two_rounds):
    """report/rounds.json: each round's own selection counts and audit, and the share of round 2's
    candidates that round 1 also had, as a direct count of the two candidate tables gives it."""
    import pyarrow.parquet as pq

    run, plan = two_rounds
    assert planned_jobs(plan)["audit"] == 2 and planned_jobs(plan)["take_last_audit"] == 1  # the dataset's: a copy
    results = run / "results/fx"
    rows = json.loads((results / "report/rounds.json").read_text())
    assert [row["round"] for row in rows] == [1, 2] and rows[0]["candidates_in_previous_round"] is None
    pairs = [
        set(
            zip(
                *pq.read_table(results / f"rounds/{r}/search/candidates.parquet", columns=["query_row", "doc_row"])
                .to_pydict()
                .values(),
                strict=True,
            )
        )
        for r in (1, 2)
    ]
    assert rows[1]["candidates_in_previous_round"] == pytest.approx(len(pairs[0] & pairs[1]) / len(pairs[1]))
    for row in rows:
        selection = json.loads((results / f"rounds/{row['round']}/selection.json").read_text())
        audit = json.loads((results / f"rounds/{row['round']}/audit.json").read_text())
        assert row["negatives"] == selection["counts"]["negatives"]
        assert row["false_negative_rate"] == audit["strategies"]["negflow (configured)"]["false_negative_rate"]
        assert row["ndcg@10"] == audit["retrieval"]["ndcg@10"]
    assert (results / "report/rounds.png").stat().st_size > 0


@pytest.mark.slow
def test_a_training_change_reruns_round_2_and_nothing_before(two_rounds, dataset_block):
    run, _ = two_rounds
    write_config(run, {"fx": {**dataset_block, **ROUNDS, "finetune_learning_rate": 1e-4}})
    jobs = planned_jobs(snakemake(run, "-n"))
    assert jobs["train_round"] == jobs["embed"] == jobs["export_negatives"] == jobs["take_last_round"] == 1
    assert "prepare" not in jobs
    write_config(run, {"fx": {**dataset_block, **ROUNDS, "round_training": "restart"}})
    assert planned_jobs(snakemake(run, "-n"))["train_round"] == 1
    write_config(run, {"fx": {**dataset_block, **ROUNDS}})
    assert planned_jobs(snakemake(run, "-n")) == {}


@pytest.mark.slow
def test_a_third_round_keeps_the_two_mined(two_rounds, dataset_block):
    """rounds 2 -> 3: round 3 trains from round 2's model and mines; rounds 1 and 2 and prepare stay."""
    run, _ = two_rounds
    write_config(run, {"fx": {**dataset_block, **ROUNDS, "rounds": 3}})
    plan = snakemake(run, "-n")
    jobs = planned_jobs(plan)
    assert jobs["train_round"] == jobs["embed"] == jobs["search"] == 1 and "prepare" not in jobs
    assert jobs["export_negatives"] == jobs["take_last_round"] == 1  # round 3's, and the dataset's copy of it
    (training,) = job_inputs(plan.stdout, "train_round")
    assert "results/fx/rounds/2/negatives.jsonl" in training and "results/fx/rounds/2/model" in training
    write_config(run, {"fx": {**dataset_block, **ROUNDS}})


@pytest.mark.slow
def test_sources_other_than_the_dense_one_run_once_for_every_round(tmp_path, dataset_block):
    """BM25's index and search do not depend on the round's model: one of each, fused into both rounds."""
    write_config(tmp_path, {"fx": {**dataset_block, **ROUNDS, "candidate_sources": ["dense", "bm25"]}})
    plan = snakemake(tmp_path, "-n")
    jobs = planned_jobs(plan)
    assert jobs["index_bm25"] == jobs["search_bm25"] == 1 and jobs["fuse_candidates"] == 2
    assert all("results/fx/bm25/candidates.parquet" in inputs for inputs in job_inputs(plan.stdout, "fuse_candidates"))
    assert "results/fx/bm25/candidates/1-of-1.parquet" in plan.stdout and "rounds/2/bm25" not in plan.stdout


@pytest.mark.slow
def test_under_selection_auto_each_round_is_calibrated_and_the_rounds_page_reads_each_calibration(
    tmp_path, dataset_block
):
    """A dry run: one calibration per round, none for the dataset itself, and plot_rounds reads both."""
    write_config(tmp_path, {"fx": {**dataset_block, **ROUNDS, "selection": "auto"}})
    plan = snakemake(tmp_path, "-n")
    assert planned_jobs(plan)["calibrate_selection"] == 2  # the dataset's own plot_calibration reads round 2's
    (page,) = job_inputs(plan.stdout, "plot_rounds")
    assert all(f"results/fx/rounds/{r}/calibrate/calibration.json" in page for r in (1, 2))


@pytest.mark.slow
def test_a_pairs_dataset_reads_its_pair_file_once_for_every_round(tmp_path, fixture_data, dataset_block):
    """read_pairs and prepare run for the dataset itself, never in a round's folder (the drop-in function
    always mines a pairs dataset)."""
    corpus = [json.loads(line)["text"] for line in fixture_data["corpus"].read_text().splitlines()]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps([f"question about {t[:40]}", t]) + "\n" for t in corpus[:40]))
    block = {key: value for key, value in dataset_block.items() if key not in ("corpus", "queries", "qrels")}
    write_config(tmp_path, {"p": {**block, **ROUNDS, "pairs": str(pairs), "audit_qrels": None}})
    plan = snakemake(tmp_path, "-n")
    jobs = planned_jobs(plan)
    assert jobs["read_pairs"] == jobs["prepare"] == 1 and jobs["embed"] == 2
    assert "results/p/read_pairs/manifest.json" in plan.stdout and "rounds/1/read_pairs" not in plan.stdout


# Loaded by every Python process of the run (through PYTHONPATH); in round 2's train_round job it stops the
# job as its second training step begins: one optimizer step taken, the model half trained.
TRAINING_PAUSE = """
import os, signal, sys
if sys.argv and sys.argv[0].endswith(".train_round.py"):
    from transformers import Trainer
    _step, _calls = Trainer.training_step, []
    def _paused(self, *args, **kwargs):
        _calls.append(1)
        if len(_calls) == 2:
            os.kill(os.getpid(), signal.SIGSTOP)
        return _step(self, *args, **kwargs)
    Trainer.training_step = _paused
"""


@pytest.mark.slow
def test_round_2_killed_mid_training_resumes_to_the_same_model_and_negatives(two_rounds, own_groups):
    """Round 2 mined afresh (its folder removed) and the run SIGKILLed (Snakemake and its jobs) while round
    2's model trains: no model is left, only the job's scratch; the rerun trains again from the start
    (seeded, no checkpoint), train_round clears the killed job's scratch, and the model and every file after
    it come out byte-identical. Catches the killed job's scratch left behind (train_round not clearing it)
    and a retraining that is not reproducible."""
    run, _ = two_rounds
    results = run / "results/fx"
    files = ["rounds/2/model/model.safetensors", "rounds/2/negatives.jsonl", "negatives.jsonl"]
    before = [(results / f).read_bytes() for f in files]
    shutil.rmtree(results / "rounds/2")
    jobs = run_until_killed(run, own_groups, "train_round", (), TRAINING_PAUSE)
    assert jobs["train_round"] == "T"
    assert not (results / "rounds/2/model").exists()
    assert len(list((results / "rounds/2").glob(".train-round-*"))) == 1
    snakemake(run, "--unlock")
    rerun = planned_jobs(snakemake(run, "-n", "--rerun-incomplete"))
    assert rerun["train_round"] == 1 and "prepare" not in rerun and rerun["embed"] == 1
    snakemake(run, "--rerun-incomplete")
    assert [(results / f).read_bytes() for f in files] == before
    assert list((results / "rounds/2").glob(".train-round-*")) == []
