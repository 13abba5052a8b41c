"""Pair datasets end to end through `snakemake`: the same data as pairs and as BEIR triples mines the same
candidates, drops and (with `sampling: top`) negatives; a symmetric set file never returns a query's own
text; given negatives kept come first; a bad pair file stops before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import read_jsonl, snakemake, write_config

from negflow.negatives import read_negatives
from negflow.store import load_table

pytestmark = pytest.mark.slow  # every test here runs Snakemake or the real model


def _texts(run: Path, dataset: str) -> tuple[dict[str, str], dict[str, str]]:
    """Query and document id -> text of a run's prepared tables."""
    tables = []
    for part in ("queries", "corpus"):
        table = load_table(run / f"results/{dataset}/prepare/{part}", ["id", "text"])
        tables.append(dict(zip(table["id"].to_pylist(), table["text"].to_pylist(), strict=True)))
    return tables[0], tables[1]


def _negatives_by_text(run: Path, dataset: str) -> dict[str, tuple[list[str], list[str]]]:
    """query text -> (positive texts, negative texts) of negatives.jsonl."""
    queries, docs = _texts(run, dataset)
    out = {}
    for record in read_negatives(run / f"results/{dataset}/negatives.jsonl"):
        out[queries[record.query]] = ([docs[d] for d in record.positives()], [docs[d] for d in record.negatives()])
    return out


def _write_jsonl(path: Path, objs) -> str:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def pair_runs(tmp_path_factory, fixture_data, dataset_block):
    """One run of four datasets: the fixture's positives as BEIR triples and as a pair file (both
    `sampling: top`), a symmetric set file read with set_mode all, and triplets whose negatives are kept."""
    root = tmp_path_factory.mktemp("pairs")
    corpus = read_jsonl(fixture_data["corpus"])
    text = {d["_id"]: d["text"] for d in corpus}
    query_text = {q["_id"]: q["text"] for q in read_jsonl(fixture_data["queries"])}
    qrels = [line.split("\t") for line in fixture_data["qrels"].read_text().splitlines()[1:]]
    positives = [(q, d) for q, d, s in qrels if int(s) >= 1]
    order = list(dict.fromkeys(q for q, _ in positives))
    beir = root / "beir"
    beir.mkdir()
    _write_jsonl(beir / "queries.jsonl", [{"_id": q, "text": query_text[q]} for q in order])
    (beir / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in positives))
    pairs = _write_jsonl(root / "pairs.jsonl", [[query_text[q], text[d]] for q, d in positives])
    sets = [{"set": [corpus[i]["text"], corpus[i + 1]["text"], corpus[i + 2]["text"]]} for i in range(0, 30, 3)]
    used = {d for _, d in positives}
    spare = [d["text"] for d in corpus if d["_id"] not in used]
    triplets = [[query_text[q], text[d], spare[i]] for i, (q, d) in enumerate(positives)]
    common = {
        **dataset_block,
        "audit_qrels": None,
        "train_formats": ["n-tuple"],
        "sampling": "top",
    }
    datasets = {
        "beir_top": {**common, "queries": str(beir / "queries.jsonl"), "qrels": str(beir / "qrels.tsv")},
        "pairs_top": {**common, "pairs": pairs},
        "sym": {**common, "pairs": _write_jsonl(root / "sets.jsonl", sets), "set_mode": "all"},
        "keep": {
            **common,
            "pairs": _write_jsonl(root / "triplets.jsonl", triplets),
            "given_negatives": "keep",
            "audit_holdout": True,  # the audit works on pair data: the repeated anchor's second positive hides
        },
    }
    for name in ("pairs_top", "sym", "keep"):  # a pairs dataset names no queries or qrels
        datasets[name] = {k: v for k, v in datasets[name].items() if k not in ("queries", "qrels")}
    write_config(root, datasets)
    snakemake(root)
    return root


def test_pairs_mine_what_the_same_beir_triples_mine(pair_runs):
    beir = _negatives_by_text(pair_runs, "beir_top")
    pairs = _negatives_by_text(pair_runs, "pairs_top")
    assert pairs == beir and sum(len(n) for _, n in beir.values()) > 0
    selections = [
        json.loads((pair_runs / f"results/{d}/selection.json").read_text()) for d in ("beir_top", "pairs_top")
    ]
    assert selections[0]["dropped"] == selections[1]["dropped"]
    assert selections[0]["counts"] == selections[1]["counts"]
    candidates = []
    for dataset in ("beir_top", "pairs_top"):
        queries, docs = _texts(pair_runs, dataset)
        mined = pq.read_table(pair_runs / f"results/{dataset}/search/candidates.parquet").to_pylist()
        candidates.append(sorted((queries[r["query_id"]], docs[r["doc_id"]], r["rank"]) for r in mined))
    assert candidates[0] == candidates[1]


def test_pair_run_provenance_names_the_pair_file(pair_runs):
    sidecar = json.loads((pair_runs / "results/pairs_top/negatives.provenance.json").read_text())
    assert (
        sidecar["inputs"]["pairs"]["path"].endswith("pairs.jsonl") and len(sidecar["inputs"]["pairs"]["sha256"]) == 64
    )
    assert sidecar["pairs"]["shape"] == '["anchor", "positive"]' and sidecar["pairs"]["counts"]["queries"] > 0
    assert sidecar["settings"]["pairs"].endswith("pairs.jsonl") and sidecar["settings"]["set_mode"] == "first"


def test_symmetric_sets_never_return_a_querys_own_text(pair_runs):
    mined = _negatives_by_text(pair_runs, "sym")
    assert len(mined) == 30
    for query, (positives, negatives) in mined.items():
        assert len(positives) == 2 and query not in positives
        assert query not in negatives
    assert sum(len(negatives) for _, negatives in mined.values()) > 0
    queries, docs = _texts(pair_runs, "sym")
    doc_of_text = {t: d for d, t in docs.items()}
    candidates = pq.read_table(pair_runs / "results/sym/search/candidates.parquet").to_pylist()
    assert not any(docs[r["doc_id"]] == queries[r["query_id"]] for r in candidates)
    assert all(t in doc_of_text for t in queries.values())  # every query's text is also a document


def test_kept_negatives_come_first_and_count_towards_num_negatives(pair_runs):
    mined = _negatives_by_text(pair_runs, "keep")
    manifest = json.loads((pair_runs / "results/keep/read_pairs/manifest.json").read_text())
    given: dict[str, list[str]] = {}
    for query, _, negative in read_jsonl(Path(manifest["inputs"]["pairs"]["path"])):
        given.setdefault(query, []).append(negative)
    assert any(len(n) > 1 for n in given.values())  # the repeated anchor brings two
    for query, (_, negatives) in mined.items():
        assert negatives[: len(given[query])] == given[query]
        assert not set(given[query]) & set(negatives[len(given[query]) :]) and len(negatives) <= 4
    selection = json.loads((pair_runs / "results/keep/selection.json").read_text())
    assert selection["counts"]["given_negatives"] == sum(map(len, given.values()))
    assert selection["counts"]["negatives"] == sum(len(n) for _, n in mined.values()) - sum(map(len, given.values()))
    rows = pq.read_table(pair_runs / "results/keep/train/n-tuple.parquet").to_pylist()
    assert rows and all(r["negative_1"] == given[r["anchor"]][0] for r in rows)
    audit = json.loads((pair_runs / "results/keep/audit.json").read_text())
    assert audit["queries_audited"] == 1 and audit["judgments"]["audit_holdout"].startswith("1 hidden positives")
    assert (pair_runs / "results/keep/report/summary.html").is_file()


def test_a_bad_pair_file_stops_before_any_model_loads(tmp_path, dataset_block):
    pairs = _write_jsonl(tmp_path / "bad.jsonl", [["q", "p"], ["q", "p", "n"]])
    block = {k: v for k, v in dataset_block.items() if k not in ("corpus", "queries", "qrels", "audit_qrels")}
    write_config(tmp_path, {"bad": {**block, "pairs": pairs}})
    proc = snakemake(tmp_path, check=False)
    output = proc.stdout + proc.stderr
    message = f"{pairs}:2: a line of shape"
    assert proc.returncode != 0 and any(message in line and len(line) < 400 for line in output.splitlines()), output
    assert not (tmp_path / "logs/prepare").exists()
    assert not [p for p in (tmp_path / "results").rglob("*") if p.is_file()]


def test_a_pairs_dataset_judged_by_hub_qrels_reads_its_queries_from_read_pairs(tmp_path, dataset_block):
    """A hub id as audit_qrels is no file, yet the queries it judges are read_pairs' table: an input of
    prepare_judgments, as for local qrels."""
    block = {k: v for k, v in dataset_block.items() if k not in ("queries", "qrels")}
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [["a query", "its positive"]])
    write_config(tmp_path, {"px": {**block, "pairs": pairs, "audit_qrels": "org/qrels-on-the-hub"}})
    plan = snakemake(tmp_path, "-n", "results/px/prepare/judgments.parquet").stdout
    job = plan[plan.index("rule prepare_judgments:") :].split("\n\n")[0]
    inputs = next(line for line in job.splitlines() if line.strip().startswith("input:"))
    assert "results/px/read_pairs/queries.parquet" in inputs and "results/px/prepare/corpus" in inputs
