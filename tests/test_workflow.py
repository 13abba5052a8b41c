"""End to end through `snakemake` in a temporary directory, with tiny random-init models built by the
fixtures: output schema and invariants, with and without a cross-encoder, what reruns after a change,
and bad input stopping before any expensive stage with nothing half-written."""

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import (
    SELECTION_JOBS,
    assert_same_negatives,
    copy_workflow,
    planned_jobs,
    read_jsonl,
    snakemake,
    write_config,
)

from negflow.store import ShardedEmbeddings

pytestmark = pytest.mark.slow  # every test here runs Snakemake or the real model


@pytest.fixture(scope="module")
def fx_run(tmp_path_factory, dataset_block):
    """One complete run without a cross-encoder (a bare `snakemake` mines every configured dataset)."""
    workdir = tmp_path_factory.mktemp("run")
    copy_workflow(workdir)  # test_reruns_touch_only_what_a_change_affects edits its library code
    write_config(workdir, {"fx": dataset_block})
    snakemake(workdir)
    return workdir


def test_two_gpus_two_jobs_at_once_and_shards_merge_to_the_one_shard_run(
    tmp_path, dataset_block, tiny_models, local_ce_run
):
    """Two fake GPU ids on a CPU machine: the lease logic is real, the models run on the CPU. Every stage
    is split in two (score by `--set-scatter` over the config's 1); with `--resources gpu=2` two GPU jobs
    run at once on different devices, and the merged result is the one-shard run's."""
    block = {**dataset_block, "ce": str(tiny_models["ce"])}
    write_config(tmp_path, {"fx": block}, scatter={"embed": 2, "search": 2, "score": 1})
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "NEGFLOW_GPU_LOCK_DIR": str(tmp_path / "locks")}
    proc = snakemake(
        tmp_path,
        "--resources",
        "gpu=2",
        "--set-threads",
        "embed=1",
        "score_pairs=1",
        "--set-scatter",
        "score=2",
        env=env,
    )
    planned = planned_jobs(proc)
    assert (planned["embed"], planned["search"], planned["score_pairs"], planned["merge_scores"]) == (2, 2, 2, 1)
    leases = {}
    for log in sorted((tmp_path / "logs").rglob("*.log")):
        found = re.search(r"leased GPU (\d) of 0,1", log.read_text())
        if found:
            leases[log.relative_to(tmp_path / "logs").as_posix()] = found[1]
    assert sorted(leases) == [
        "audit/fx.log",
        *(f"embed/fx.{i}-of-2.log" for i in (1, 2)),
        "score_pairs/fx.1-of-2.log",
        "score_pairs/fx.2-of-2.log",
    ]
    # devices are taken first-free, so a job only gets GPU 1 while another job holds GPU 0
    assert set(leases.values()) == {"0", "1"}
    assert_same_negatives(tmp_path / "results/fx/negatives.jsonl", local_ce_run / "results/fx/negatives.jsonl")
    # provenance: each model's shards ran alike, so one pass entry each, listing both shards
    models = json.loads((tmp_path / "results/fx/negatives.provenance.json").read_text())["models"]
    for model in ("embedding", "ce"):
        passes = [(p["shards"], p["device"], p["dtype"]) for p in models[model]["passes"]]
        assert passes == [(["1-of-2", "2-of-2"], "cpu", "fp32")], model


def test_ivf_index_trained_once_filled_per_shard_and_searched_in_batches(tmp_path, dataset_block, fx_run):
    """The distributed index path through Snakemake: every cell probed, so the ranked cosines must be the
    exact search's (twins, documents with identical embeddings, may trade places)."""
    block = {**dataset_block, "index": "ivf", "ivf_nlist": 4, "ivf_nprobe": 4}
    write_config(tmp_path, {"fx": block}, scatter={"embed": 2, "search": 3})
    proc = snakemake(tmp_path, "results/fx/search/candidates.parquet")
    planned = planned_jobs(proc)
    assert [planned[r] for r in ("train_index", "add_to_index", "build_index", "search")] == [1, 2, 1, 3]
    assert "merged 3 search shards" in (tmp_path / "logs/merge_candidates/fx.log").read_text()
    ivf = pq.read_table(tmp_path / "results/fx/search/candidates.parquet").to_pandas()
    flat = pq.read_table(fx_run / "results/fx/search/candidates.parquet").to_pandas()
    assert ivf[["query_row", "rank"]].values.tolist() == flat[["query_row", "rank"]].values.tolist()
    np.testing.assert_allclose(ivf["cosine"], flat["cosine"], atol=1e-6)


def test_output_schema_and_invariants(fx_run, fixture_data):
    records = read_jsonl(fx_run / "results/fx/negatives.jsonl")
    qrels = [line.split("\t") for line in fixture_data["qrels"].read_text().splitlines()[1:]]
    positives = {}
    for q, d, s in qrels:
        if int(s) >= 1:
            positives.setdefault(q, []).append(d)
    judged = {(q, d) for q, d, _ in qrels}
    assert [r["query"] for r in records] == list(positives)  # one line per query with a positive, in order
    corpus = ShardedEmbeddings([str(p) for p in (fx_run / "results/fx/embed/corpus").glob("*.npy")])
    doc_ids = [line.split('"_id": "')[1].split('"')[0] for line in fixture_data["corpus"].read_text().splitlines()]
    row_of = {d: i for i, d in enumerate(doc_ids)}
    for rec in records:
        assert set(rec) == {"query", "docs", "doc_scores", "query_doc_cos", "doc_doc_cos"}
        n_pos = len(positives[rec["query"]])
        assert rec["docs"][:n_pos] == positives[rec["query"]]
        negatives = rec["docs"][n_pos:]
        assert len(negatives) <= 4 and len(set(rec["docs"])) == len(rec["docs"])
        assert not any((rec["query"], d) in judged for d in negatives)
        assert rec["doc_scores"][n_pos:] == [0.0] * len(negatives) and min(rec["doc_scores"][:n_pos]) >= 1
        assert len(rec["query_doc_cos"]) == len(rec["docs"])
        assert max(rec["query_doc_cos"][n_pos:], default=0) <= min(rec["query_doc_cos"][:n_pos]) + 1e-6
        emb = corpus.take(np.array([row_of[d] for d in rec["docs"]]))
        np.testing.assert_allclose(rec["doc_doc_cos"], (emb @ emb.T).ravel(), atol=2e-6)
    assert sum(len(r["docs"]) for r in records) > 2 * len(records)
    multi = next(r for r in records if len(positives[r["query"]]) > 1)
    assert multi["doc_scores"][:2] == [1.0, 2.0]
    log = (fx_run / "logs/prepare/fx.log").read_text()
    assert "1 queries without positives skipped" in log
    assert re.search(
        r"selected on cosine: \d+ queries, \d+ candidates, \d+ negatives \(and 0 given\); \d+ queries short of 4 .*"
        r"dropped same_text_as_positive 0, relative_margin \d+$",
        (fx_run / "logs/export_negatives/fx.log").read_text(),
        re.M,
    )
    report = json.loads((fx_run / "results/fx/selection.json").read_text())
    assert report["counts"]["negatives"] == sum(r["doc_scores"].count(0.0) for r in records)
    assert report["counts"]["queries"] == len(records)
    assert set(report["dropped"]) == {"same_text_as_positive", "relative_margin"}
    assert report["settings"]["sampling"] == "random" and report["settings"]["num_negatives"] == 4
    q = report["distributions"]["negative_cosine"]
    assert q["q00"] <= q["q50"] <= q["q100"] <= report["distributions"]["positive_cosine"]["q100"]


def test_training_files_load_and_match_the_negatives(fx_run, fixture_data):
    import datasets

    records = read_jsonl(fx_run / "results/fx/negatives.jsonl")
    corpus = {json.loads(line)["_id"]: json.loads(line) for line in fixture_data["corpus"].read_text().splitlines()}
    text = {d: f"{c['title']} {c['text']}".strip() if c.get("title") else c["text"] for d, c in corpus.items()}
    queries = {
        json.loads(line)["_id"]: json.loads(line)["text"] for line in fixture_data["queries"].read_text().splitlines()
    }
    split = [(r, sum(s > 0 for s in r["doc_scores"])) for r in records]
    train = fx_run / "results/fx/train"

    flag = read_jsonl(train / "flag.jsonl")
    assert len(flag) == len(records)
    for line, (rec, n_pos) in zip(flag, split, strict=True):
        assert set(line) == {"query", "pos", "neg", "pos_scores", "neg_scores", "prompt"}
        assert line["query"] == queries[rec["query"]] and line["prompt"] == ""
        assert line["pos"] == [text[d] for d in rec["docs"][:n_pos]]
        assert line["neg"] == [text[d] for d in rec["docs"][n_pos:]]
        assert line["neg_scores"] == rec["query_doc_cos"][n_pos:]

    def load(fmt):
        return datasets.load_dataset("parquet", data_files=str(train / f"{fmt}.parquet"), split="train")

    with_negs = [(r, n) for r, n in split if len(r["docs"]) > n]
    triplet = load("triplet")
    assert triplet.column_names == ["anchor", "positive", "negative"]
    assert len(triplet) == sum(max(n, len(r["docs"]) - n) for r, n in with_negs)  # no n_pos x n_neg blow-up
    full = [(r, n) for r, n in split if len(r["docs"]) - n == 4]
    ntuple = load("n-tuple")
    assert ntuple.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3", "negative_4"]
    assert len(ntuple) == sum(n for _, n in full)
    pair = load("labeled-pair")
    assert pair.column_names == ["anchor", "positive", "label"]
    assert sum(pair["label"]) == sum(n for _, n in with_negs) and len(pair) == sum(len(r["docs"]) for r, _ in with_negs)
    listed = load("labeled-list")
    assert listed.column_names == ["anchor", "positive", "labels"] and len(listed) == len(with_negs)
    multi = next(row for row in listed if sum(row["labels"]) > 1)  # q0: two positives in one row
    assert multi["labels"][:2] == [1, 1] and set(multi["labels"][2:]) == {0}

    for name in (
        "negatives",
        "train/flag",
        "train/triplet",
        "train/n-tuple",
        "train/labeled-pair",
        "train/labeled-list",
    ):
        side = json.loads((fx_run / f"results/fx/{name}.provenance.json").read_text())
        exported = next((fx_run / "results/fx").glob(f"{name}.*[!n]"))
        assert side["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
        assert side["inputs"]["corpus"]["sha256"] == hashlib.sha256(fixture_data["corpus"].read_bytes()).hexdigest()
        assert side["models"]["embedding"]["weights_sha256"]["model.safetensors"]
        assert side["settings"]["relative_margin"] == 0.0 and side["seed"] == 42
        assert side["settings"]["trust_remote_code"] is False and side["settings"]["truncate_dim"] is None
        assert side["models"]["embedding"]["configured_revision"] is None
        assert side["negflow_version"] == "0.1.0"


def test_audit_counts_the_false_negatives_of_qrels_other_than_the_mining_ones(fx_run, dataset_block):
    """Audit qrels that judge relevant one exported negative of each of five queries, and each one's best
    ranked candidate that export did not select: the configured selection's replay must count exactly five
    false negatives, sentence-transformers' `top` (ranks 1-4) at least the added first-ranked ones, and the
    qrels change must rerun the audit alone. With the mining qrels as audit qrels `false_negatives == 0`
    held by construction, so a count that was never incremented passed."""
    records = read_jsonl(fx_run / "results/fx/negatives.jsonl")
    candidates = pq.read_table(fx_run / "results/fx/search/candidates.parquet").to_pandas()
    lines = Path(dataset_block["qrels"]).read_text(encoding="utf-8").rstrip("\n").split("\n")
    picked = [r for r in records if 0.0 in r["doc_scores"]][:5]
    assert len(picked) == 5
    first_ranked = 0
    for r in picked:
        negative = r["docs"][r["doc_scores"].index(0.0)]
        ranked = candidates[candidates["query_id"] == r["query"]].sort_values("rank")["doc_id"].tolist()
        unselected = next(d for d in ranked if d not in r["docs"])
        first_ranked += unselected == ranked[0]
        lines += [f"{r['query']}\t{negative}\t2", f"{r['query']}\t{unselected}\t2"]
    (fx_run / "audit.tsv").write_text("\n".join(lines) + "\n")
    write_config(fx_run, {"fx": {**dataset_block, "audit_qrels": str(fx_run / "audit.tsv")}})
    try:
        assert planned_jobs(snakemake(fx_run, "-n")) == {"prepare_judgments": 1, "audit": 1, "all": 1}
        snakemake(fx_run)
        audit = json.loads((fx_run / "results/fx/audit.json").read_text())
    finally:  # the module's other tests read the audit of the mining qrels
        write_config(fx_run, {"fx": dataset_block})
        snakemake(fx_run)
    configured = audit["strategies"]["negflow (configured)"]
    assert configured["false_negatives"] == 5
    assert configured["negatives"] == sum(r["doc_scores"].count(0.0) for r in records)
    assert configured["false_negative_rate"] == round(5 / configured["negatives"], 4)
    assert first_ranked >= 1 and audit["strategies"]["sentence-transformers top"]["false_negatives"] >= first_ranked


def test_audit_reports_strategies_and_retrieval_quality(fx_run):
    audit = json.loads((fx_run / "results/fx/audit.json").read_text())
    assert audit["judgments"] == {"audit_qrels": audit["judgments"]["audit_qrels"]}
    assert audit["queries_audited"] == 16
    strategies = audit["strategies"]
    assert list(strategies)[:2] == ["negflow (configured)", "sentence-transformers top"]
    for r in strategies.values():
        assert r["false_negatives"] == 0  # the audit qrels are the mining qrels: their documents never are candidates
        assert r["negatives"] == 0 or 1 <= r["median_rank"] <= 100
    assert strategies["sentence-transformers top"]["median_rank"] == 2.5  # ranks 1-4 of every query
    assert strategies["FlagEmbedding ranks 10-210 random"]["median_rank"] > 10
    retrieval = audit["retrieval"]
    assert retrieval["queries"] == 16 and all(0 <= retrieval[m] <= 1 for m in ("ndcg@10", "mrr@10", "recall@100"))


def test_reruns_touch_only_what_a_change_affects(fx_run, dataset_block):
    def plan(**changes):
        write_config(fx_run, {"fx": {**dataset_block, **changes}})
        return planned_jobs(snakemake(fx_run, "-n"))

    selection = SELECTION_JOBS
    everything = {
        "prepare": 1,
        "prepare_judgments": 1,
        "embed": 1,
        "search": 1,
        "merge_candidates": 1,
        "compute_qrels_cosines": 1,
        **selection,
    }
    assert plan() == {}
    assert plan(embedding_batch_size=3, search_batch_size=2) == {}  # performance-only knobs
    assert plan(relative_margin=0.1) == selection
    assert plan(sampling="top") == selection
    assert plan(seed=7) == selection  # random sampling; not prepare (no hold-out) nor search (flat index)
    assert plan(num_negatives=2) == selection
    assert plan(selection="auto") == {"calibrate_selection": 1, "plot_calibration": 1, **selection}
    assert plan(fn_budget=0.2) == {}  # the budget of a fixed selection changes nothing
    assert plan(train_scores=True) == {"export_sentence_transformers": 4, "all": 1}
    assert plan(flag_layout="pair") == {"export_flag": 1, "all": 1}
    index = {"train_index": 1, "add_to_index": 1, "build_index": 1, "search": 1, "merge_candidates": 1}
    assert plan(index="ivf") == {**index, **selection}
    assert plan(ce=dataset_block["embedding"].replace("embedder", "cross-encoder")) == {
        "prepare_ce_pairs": 1,
        "score_pairs": 1,
        "merge_scores": 1,
        **selection,
    }
    judged_again = fx_run / "audit-qrels-copy.tsv"  # other judgments rerun their check and the audit, not embed
    shutil.copy(dataset_block["audit_qrels"], judged_again)
    assert plan(audit_qrels=str(judged_again)) == {"prepare_judgments": 1, "audit": 1, "all": 1}
    after_prepare = {rule: n for rule, n in everything.items() if rule not in ("prepare", "prepare_judgments")}
    assert plan(truncate_dim=16) == after_prepare  # the embeddings, not the tokens
    assert plan(embedding_model_kwargs={"attn_implementation": "eager"}) == after_prepare
    assert plan(trust_remote_code=True) == everything  # a tokenizer may run its own code too
    library = fx_run / "workflow" / "scripts" / "negflow"
    for module, rerun in (("selection", selection), ("files", everything), ("read_pairs", {})):
        code = library / f"{module}.py"  # editing library code reruns the rules whose scripts import it
        original, stat = code.read_bytes(), code.stat()
        os.utime(code, ns=(stat.st_atime_ns, time.time_ns()))
        assert plan() == {}  # a touch alone changes no checksum: nothing reruns
        code.write_bytes(original + b"\n# edited by test_reruns_touch_only_what_a_change_affects\n")
        assert plan() == rerun, module
        code.write_bytes(original)
        os.utime(code, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert plan(query_prompt="query: ") == everything
    assert plan(doc_prompt="passage: ") == everything
    moved = dataset_block["embedding"] + "-copy"
    shutil.copytree(dataset_block["embedding"], moved, dirs_exist_ok=True)
    assert plan(embedding=moved) == everything
    write_config(fx_run, {"fx": dataset_block})


def test_selection_auto_calibrates_and_a_new_budget_reruns_only_calibration_and_exports(
    fx_run, dataset_block, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(fx_run, run, symlinks=True)
    block = {**dataset_block, "selection": "auto"}
    write_config(run, {"fx": block})
    snakemake(run)
    calibration = json.loads((run / "results/fx/calibrate/calibration.json").read_text())
    assert len(calibration["grid"]) == 180 and len(calibration["references"]) == 4
    held = calibration["evidence"][0]
    # The fixture has too few queries with two positives: auto keeps the configured selection and says so.
    assert held["landed_among_candidates"] < held["minimum"]
    assert calibration["choice"]["fallback"] and calibration["choice"]["reason"].startswith("thin evidence: ")
    selection = json.loads((run / "results/fx/selection.json").read_text())
    assert selection["calibration"]["reason"] == calibration["choice"]["reason"]
    assert selection["calibration"]["summary"].startswith("auto kept the configured selection (thin evidence")
    assert (run / "results/fx/report/calibration.png").stat().st_size > 10_000
    sidecar = json.loads((run / "results/fx/train/flag.provenance.json").read_text())
    assert sidecar["selection_chosen"]["reason"] == calibration["choice"]["reason"]
    assert (sidecar["settings"]["selection"], sidecar["settings"]["fn_budget"]) == ("auto", 0.05)
    with open(run / "results/fx/negatives.jsonl") as mined, open(fx_run / "results/fx/negatives.jsonl") as fixed:
        assert mined.read() == fixed.read()  # the configured selection, as the fixed run made it

    write_config(run, {"fx": {**block, "fn_budget": 0.2}})
    assert planned_jobs(snakemake(run, "-n")) == {"calibrate_selection": 1, "plot_calibration": 1, **SELECTION_JOBS}


def test_changing_ce_reruns_only_scoring_and_export(fx_run, dataset_block, tiny_models):
    """A real run: adding a cross-encoder reruns stages 4-5 (score, export), leaves 1-3 untouched, adds CE scores."""
    upstream = [fx_run / "results/fx/search/candidates.parquet", *sorted((fx_run / "results/fx/embed").rglob("*.npy"))]
    before = [p.stat().st_mtime_ns for p in upstream]
    write_config(fx_run, {"fx": {**dataset_block, "ce": str(tiny_models["ce"])}})
    snakemake(fx_run)
    assert [p.stat().st_mtime_ns for p in upstream] == before
    scored = pq.read_table(fx_run / "results/fx/score/pair_scores.parquet")
    for rec in read_jsonl(fx_run / "results/fx/negatives.jsonl"):
        assert len(rec["query_doc_ce"]) == len(rec["docs"])
        n_pos = rec["doc_scores"].index(0.0) if 0.0 in rec["doc_scores"] else len(rec["docs"])
        assert max(rec["query_doc_ce"][n_pos:], default=0) <= min(rec["query_doc_ce"][:n_pos]) + 1e-6
    assert scored.num_rows >= 100
    assert "selected on ce" in (fx_run / "logs/export_negatives/fx.log").read_text()
    write_config(fx_run, {"fx": dataset_block})


def test_finetune_reports_untrained_mined_and_random(fx_run, dataset_block):
    """The proof stage end to end with the tiny model: its untrained figures must equal the audit's
    retrieval figures (same model, same qrels), and both trainings must run on the same rows."""
    block = {**dataset_block, "finetune_eval_qrels": dataset_block["qrels"], "finetune_negatives": 2}
    write_config(fx_run, {"fx": {**block, "finetune_batch_size": 4}})
    snakemake(fx_run, "results/fx/finetune/report.json")
    report = json.loads((fx_run / "results/fx/finetune/report.json").read_text())
    records = read_jsonl(fx_run / "results/fx/negatives.jsonl")
    expected_rows = sum(sum(s > 0 for s in r["doc_scores"]) for r in records if r["doc_scores"].count(0.0) >= 2)
    assert report["training_rows"] == expected_rows > 0
    audit = json.loads((fx_run / "results/fx/audit.json").read_text())["retrieval"]
    for metric in ("ndcg@10", "mrr@10", "recall@100"):
        assert report["untrained"][metric] == pytest.approx(audit[metric], abs=2e-4)
        assert 0 <= report["mined_negatives"][metric] <= 1 and 0 <= report["random_negatives"][metric] <= 1
    # training changed the model: its weights, not the wall-clock seconds the reports also hold (with
    # `train` returning its model untouched, the old whole-dict comparison passed on the timings alone; the
    # tiny model's figures are the same before and after training, so they cannot tell either)
    hashes = {name: report[name]["weights_sha256"] for name in ("untrained", "mined_negatives", "random_negatives")}
    assert len(set(hashes.values())) == 3
    assert report["settings"]["finetune_batch_size"] == 4
    passes = {k: (v["device"], v["dtype"]) for k, v in report["model_passes"].items()}
    assert passes == {"training": ("cpu", "fp32"), "evaluation": ("cpu", "fp32")}
    assert "finetune" not in planned_jobs(snakemake(fx_run, "-n"))  # the proof target is not part of `all`
    write_config(fx_run, {"fx": dataset_block})


def test_audit_holdout_replays_exactly_what_was_exported(tmp_path, dataset_block):
    """With audit_holdout the miner never sees q0's weaker positive; the audit's replay of the configured
    selection must flag it exactly when negatives.jsonl lists it as a negative."""
    block = {**dataset_block, "audit_qrels": None, "audit_holdout": True, "train_formats": [], "num_negatives": 40}
    write_config(tmp_path, {"fx": block})
    snakemake(tmp_path)
    held = pq.read_table(tmp_path / "results/fx/prepare/holdout.parquet").to_pylist()
    assert [(r["query_id"], r["score"]) for r in held] == [("q0", 1)]
    audit = json.loads((tmp_path / "results/fx/audit.json").read_text())
    assert audit["judgments"] == {"audit_holdout": "1 hidden positives of 1 queries"}
    assert audit["queries_audited"] == 1 and "retrieval" not in audit
    q0 = next(r for r in read_jsonl(tmp_path / "results/fx/negatives.jsonl") if r["query"] == "q0")
    assert q0["docs"][0] != held[0]["doc_id"] and q0["doc_scores"][0] == 2.0
    configured = audit["strategies"]["negflow (configured)"]
    assert configured["negatives"] == q0["doc_scores"].count(0.0)
    assert configured["false_negatives"] == int(held[0]["doc_id"] in q0["docs"])


def test_run_report_embeds_counts_histograms_ranks_and_examples(local_ce_run):
    """`snakemake --report` on the cross-encoder run: the four per-dataset items, each a real file of the
    run embedded with its caption; the score figure has a cosine and a CE panel."""
    import base64

    from PIL import Image

    from negflow.report import EXAMPLE_QUERIES

    snakemake(local_ce_run, "--report", "report.html")
    page = (local_ce_run / "report.html").read_text(encoding="utf-8")
    folder = local_ce_run / "results/fx/report"
    for name in ("summary.html", "scores.png", "ranks.png", "examples.html"):
        assert base64.b64encode((folder / name).read_bytes()).decode() in page, name
    for label in ("counts and drops", "score histograms", "negative ranks", "example queries"):
        assert label in page
    assert "Query-document scores of the positives (blue)" in page  # a caption, rendered
    scores, ranks = Image.open(folder / "scores.png"), Image.open(folder / "ranks.png")
    assert scores.width > 1.8 * ranks.width  # cosine and cross-encoder panels side by side

    selection = json.loads((local_ce_run / "results/fx/selection.json").read_text())
    summary = (folder / "summary.html").read_text()
    assert f"<td>negatives selected</td><td>{selection['counts']['negatives']:,}</td>" in summary
    for reason, dropped in selection["dropped"].items():
        assert f"<td>{reason}</td><td>{dropped:,}</td>" in summary
    examples = (folder / "examples.html").read_text()
    records = read_jsonl(local_ce_run / "results/fx/negatives.jsonl")
    assert examples.count("<tr>") == 1 + min(EXAMPLE_QUERIES, len(records))
    assert all(f"<b>{r['query']}</b>" in examples for r in records[:EXAMPLE_QUERIES])
    assert "CE " in examples


def test_a_run_whose_filters_keep_no_negative_finishes_with_a_report_that_says_why(tmp_path, dataset_block):
    """max_score -1 drops every candidate: each stage still finishes; the training files have their
    columns and no negatives; the log, selection.json and the report's summary name the filter."""
    import pyarrow.parquet as pq

    write_config(tmp_path, {"fx": {**dataset_block, "max_score": -1.0}})
    snakemake(tmp_path)
    results = tmp_path / "results" / "fx"
    selection = json.loads((results / "selection.json").read_text())
    assert selection["counts"]["negatives"] == 0
    assert selection["dropped"]["max_score"] == selection["counts"]["candidates"] > 0
    log = (tmp_path / "logs" / "export_negatives" / "fx.log").read_text()
    assert "WARNING negflow: no negative survived selection" in log and "max_score dropped" in log
    assert "no negative survived selection" in (results / "report" / "summary.html").read_text()
    for fmt in ("triplet", "n-tuple", "labeled-pair", "labeled-list"):
        assert pq.ParquetFile(results / "train" / f"{fmt}.parquet").metadata.num_rows == 0
    assert all(line["neg"] == [] for line in read_jsonl(results / "train" / "flag.jsonl"))
    assert json.loads((results / "audit.json").read_text())["strategies"]["negflow (configured)"]["negatives"] == 0
