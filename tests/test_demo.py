"""The offline demo set: real text, enough of it, and qrels that point at real ids; `make demo` runs it
through `negflow mine` and its display."""

import re

from conftest import REPO

from negflow.demo import build_docstring_dataset


def test_demo_set_has_over_a_thousand_documents_and_consistent_qrels():
    data = build_docstring_dataset()
    doc_ids = [d["_id"] for d in data["corpus"]]
    query_ids = {q["_id"] for q in data["queries"]}
    assert len(doc_ids) >= 1000 and len(set(doc_ids)) == len(doc_ids)
    assert len(data["queries"]) >= 100
    assert {q for q, _, _ in data["qrels"]} == query_ids
    assert {d for _, d, _ in data["qrels"]} <= set(doc_ids)
    assert all(len(d["text"].split()) >= 8 for d in data["corpus"])


def test_demo_set_is_deterministic():
    assert build_docstring_dataset(max_docs=50) == build_docstring_dataset(max_docs=50)


def test_make_demo_runs_the_demo_through_negflow_mine_and_its_display():
    """Catches a demo recipe that runs plain `snakemake` (385 lines of Snakemake's job blocks) or asks for
    them (`--verbose`) instead of the command's line per job."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)[1]
    assert "\t$(BIN)/negflow mine --config config/demo.yaml --out . --cores $(CORES)\n" in recipe
    assert "snakemake" not in recipe and "--verbose" not in recipe
