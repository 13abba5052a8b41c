"""End to end through `snakemake` in a temporary directory, with tiny random-init models built by the
fixtures: output schema and invariants, with and without a cross-encoder, what reruns after a change,
and bad input stopping before any expensive stage with nothing half-written."""

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, read_jsonl, snakemake, write_config

from negflow.embed import ShardedEmbeddings


def planned_jobs(proc) -> dict[str, int]:
    """Rule -> job count from Snakemake's 'Job stats' table (empty when nothing is to be done)."""
    match = re.search(r"Job stats:\njob\s+count\n[- ]+\n(.*?)\ntotal", proc.stdout + proc.stderr, re.S)
    if not match:
        return {}
    return {name: int(n) for name, n in (line.split() for line in match[1].strip().splitlines())}


@pytest.fixture(scope="module")
def dataset_block(fixture_data, tiny_models):
    return {
        "corpus": str(fixture_data["corpus"]),
        "queries": str(fixture_data["queries"]),
        "qrels": str(fixture_data["qrels"]),
        "embedding": str(tiny_models["embedder"]),
        "candidates": 100,
        "num_negatives": 4,
        "embed_shards": 2,
        "relative_margin": 0.0,  # random-init cosines cluster near 0.97: drop only what beats the positive
    }


@pytest.fixture(scope="module")
def mined(tmp_path_factory, dataset_block):
    """One complete run without a cross-encoder (a bare `snakemake` mines every configured dataset)."""
    workdir = tmp_path_factory.mktemp("run")
    write_config(workdir, {"fx": dataset_block})
    snakemake(workdir)
    return workdir


def test_output_schema_and_invariants(mined, fixture_data):
    records = read_jsonl(mined / "results/fx/negatives.jsonl")
    qrels = [line.split("\t") for line in fixture_data["qrels"].read_text().splitlines()[1:]]
    positives = {}
    for q, d, s in qrels:
        if int(s) >= 1:
            positives.setdefault(q, []).append(d)
    judged = {(q, d) for q, d, _ in qrels}
    assert [r["query"] for r in records] == list(positives)  # one line per query with a positive, in order
    corpus = ShardedEmbeddings([str(p) for p in (mined / "results/fx/embed/corpus").glob("*.npy")])
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
    log = (mined / "logs/prepare/fx.log").read_text()
    assert "1 queries without positives skipped" in log
    assert re.search(
        r"selected on cosine: \d+ queries, \d+ candidates, \d+ dropped by relative_margin=0.0",
        (mined / "logs/export_negatives/fx.log").read_text(),
    )


def test_reruns_touch_only_what_a_change_affects(mined, dataset_block):
    def plan(**changes):
        write_config(mined, {"fx": {**dataset_block, **changes}})
        return planned_jobs(snakemake(mined, "-n"))

    everything = {"prepare": 1, "embed": 4, "search": 1, "export_negatives": 1, "all": 1}
    assert plan() == {}
    assert plan(embedding_batch_size=3, search_batch_size=2) == {}  # performance-only knobs
    assert plan(relative_margin=0.1) == {"export_negatives": 1, "all": 1}
    assert plan(num_negatives=2) == {"export_negatives": 1, "all": 1}
    assert plan(seed=7) == {}  # the seed only draws the IVF training sample
    assert plan(index="ivf") == {"search": 1, "export_negatives": 1, "all": 1}
    assert plan(ce=dataset_block["embedding"].replace("embedder", "cross-encoder")) == {
        "prepare_pairs": 1,
        "score_pairs": 1,
        "export_negatives": 1,
        "all": 1,
    }
    selection_code = REPO / "scripts/negflow/selection.py"  # editing library code reruns the rules using it
    original, stat = selection_code.read_bytes(), selection_code.stat()
    try:
        os.utime(selection_code, ns=(stat.st_atime_ns, time.time_ns()))
        assert plan() == {}  # a touch alone changes no checksum: nothing reruns
        selection_code.write_bytes(original + b"\n# edited by test_reruns_touch_only_what_a_change_affects\n")
        assert plan() == {"export_negatives": 1, "all": 1}
    finally:
        selection_code.write_bytes(original)
        os.utime(selection_code, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert plan(query_prompt="query: ") == everything
    assert plan(doc_prompt="passage: ") == everything
    moved = dataset_block["embedding"] + "-copy"
    shutil.copytree(dataset_block["embedding"], moved, dirs_exist_ok=True)
    assert plan(embedding=moved) == everything
    write_config(mined, {"fx": dataset_block})


def test_changing_ce_reruns_only_scoring_and_export(mined, dataset_block, tiny_models):
    """A real run: adding a cross-encoder reruns stages 4-6, leaves 1-3 untouched, adds CE scores."""
    upstream = [mined / "results/fx/search/mined_qrels.parquet", *sorted((mined / "results/fx/embed").rglob("*.npy"))]
    before = [p.stat().st_mtime_ns for p in upstream]
    write_config(mined, {"fx": {**dataset_block, "ce": str(tiny_models["ce"])}})
    snakemake(mined)
    assert [p.stat().st_mtime_ns for p in upstream] == before
    scored = pq.read_table(mined / "results/fx/score/scored_qrels.parquet")
    for rec in read_jsonl(mined / "results/fx/negatives.jsonl"):
        assert len(rec["query_doc_ce"]) == len(rec["docs"])
        n_pos = rec["doc_scores"].index(0.0) if 0.0 in rec["doc_scores"] else len(rec["docs"])
        assert max(rec["query_doc_ce"][n_pos:], default=0) <= min(rec["query_doc_ce"][:n_pos]) + 1e-6
    assert scored.num_rows >= 100
    assert "selected on ce" in (mined / "logs/export_negatives/fx.log").read_text()
    write_config(mined, {"fx": dataset_block})


def _results_files(workdir):
    return sorted(p for p in (workdir / "results").rglob("*") if p.is_file()) if (workdir / "results").exists() else []


def test_malformed_corpus_stops_in_prepare_naming_file_and_line(tmp_path, dataset_block):
    corpus = tmp_path / "corpus.jsonl"
    lines = Path(dataset_block["corpus"]).read_text().splitlines()
    lines[5] = lines[5][:-3]
    corpus.write_text("\n".join(lines) + "\n")
    write_config(tmp_path, {"bad": {**dataset_block, "corpus": str(corpus)}})
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    assert f"negflow error: {corpus}:6: malformed JSON" in proc.stdout + proc.stderr
    assert "embed" not in planned_jobs(proc) or not (tmp_path / "logs/embed").exists()
    assert _results_files(tmp_path) == []


def test_qrels_with_unknown_ids_stop_with_count_and_first_ids(tmp_path, dataset_block):
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(Path(dataset_block["qrels"]).read_text() + "q0\tnot-a-doc\t1\nq0\talso-missing\t1\n")
    write_config(tmp_path, {"bad": {**dataset_block, "qrels": str(qrels)}})
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    assert f"{qrels}: 2 corpus ids not found (first: 'not-a-doc', 'also-missing')" in proc.stdout + proc.stderr
    assert _results_files(tmp_path) == []


def test_config_errors_stop_before_any_job(tmp_path, dataset_block):
    write_config(tmp_path, {"bad": {**dataset_block, "num_negativs": 3}})
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    assert "config: datasets.bad: unknown key 'num_negativs' (did you mean 'num_negatives'?)" in proc.stderr
    assert not (tmp_path / "logs").exists() and _results_files(tmp_path) == []
    write_config(tmp_path, {"bad": {**dataset_block, "embedding": str(tmp_path / "no-model")}})
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    assert f"config: datasets.bad.embedding: model folder '{tmp_path / 'no-model'}' does not exist" in proc.stderr
