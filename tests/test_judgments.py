"""The audit's and finetune's judgments: checked against the prepared corpus and the queries, stored, read back;
the hidden positives of audit_holdout read back as judgments."""

import re

import pytest

from negflow.errors import InputError
from negflow.judgments import load_judgments, prepare_judgments, read_holdout, relevant_docs
from negflow.prepare import prepare
from negflow.store import load_table


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, fixture_data, tiny_models):
    out = tmp_path_factory.mktemp("prepared")
    outputs = [str(out / n) for n in ("corpus", "queries", "qrels", "holdout.parquet", "manifest.json")]
    files = [str(fixture_data[n]) for n in ("corpus", "queries", "qrels")]
    prepare(*files, str(tiny_models["embedder"]), None, None, 64, 1, False, 3, *outputs)
    return out


def test_judgments_are_stored_by_kind_with_their_query_texts(prepared, fixture_data, tmp_path):
    lines = fixture_data["qrels"].read_text().splitlines()
    audit = tmp_path / "audit.tsv"
    audit.write_text("\n".join(lines[:3]) + "\n")
    out = tmp_path / "judgments.parquet"
    counts = prepare_judgments(
        {"audit": str(audit), "finetune": str(fixture_data["qrels"])},
        str(fixture_data["queries"]),
        prepared / "corpus",
        out,
        100,
    )
    assert counts == {"audit": 2, "finetune": len(lines) - 1}
    judged, texts = load_judgments(str(out), "audit")
    rows = [line.split("\t") for line in lines[1:3]]
    assert judged == {q: {d: int(g) for q2, d, g in rows if q2 == q} for q, _, _ in rows}
    assert set(texts) == set(judged) and all(texts.values())
    assert load_judgments(str(out), "finetune")[0].keys() >= judged.keys()


def test_no_judgments_configured_writes_an_empty_table(prepared, fixture_data, tmp_path):
    out = tmp_path / "judgments.parquet"
    assert prepare_judgments({"audit": None, "finetune": None}, "not-read", prepared / "corpus", out, 100) == {
        "audit": 0,
        "finetune": 0,
    }
    assert load_judgments(str(out), "audit") == ({}, {})


def test_a_corpus_no_larger_than_candidates_stops_before_any_model_stage(prepared, tmp_path):
    out = tmp_path / "judgments.parquet"
    documents = len(load_table(str(prepared / "corpus"), ["id"]))
    with pytest.raises(InputError) as err:
        prepare_judgments({"audit": None, "finetune": None}, "not-read", prepared / "corpus", out, documents)
    assert str(err.value) == (
        f"{prepared / 'corpus'}: {documents} candidates per query asked for, but the prepared corpus holds only "
        f"{documents} distinct documents; lower `candidates`"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("q0\tnot-a-doc\t1", "1 corpus ids not found (first: 'not-a-doc')"),
        ("nobody\t{doc}\t1", "1 query ids not found"),
    ],
)
def test_judgments_naming_unknown_ids_are_one_line_errors(prepared, fixture_data, tmp_path, row, message):
    lines = fixture_data["qrels"].read_text().splitlines()
    audit = tmp_path / "audit.tsv"
    audit.write_text("\n".join([*lines[:2], row.format(doc=lines[1].split("\t")[1])]) + "\n")
    out = tmp_path / "judgments.parquet"
    with pytest.raises(InputError, match="^" + re.escape(f"{audit}: {message}")):
        prepare_judgments(
            {"audit": str(audit), "finetune": None}, str(fixture_data["queries"]), prepared / "corpus", out, 100
        )
    assert not out.exists()


def test_hidden_positives_read_back_as_judgments_and_relevance_follows_the_grade(staged):
    out, _ = staged
    judged = read_holdout(str(out / "holdout.parquet"))
    assert judged and all(grades for grades in judged.values())
    (query, grades), *_ = judged.items()
    assert relevant_docs(judged, 1)[query] == set(grades)
    graded = {"q": {"a": 3, "b": 1}, "none": {"c": 1}}
    assert relevant_docs(graded, 2) == {"q": {"a"}}  # a query with nothing relevant is not audited
