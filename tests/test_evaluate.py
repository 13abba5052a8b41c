"""The audit's and finetune's judgments: checked against the prepared corpus and the queries, stored, read back."""

import math
import re

import pytest

from negflow.errors import InputError
from negflow.evaluate import load_judgments, mrr_at, ndcg_at, prepare_judgments, recall_at, retrieval_quality
from negflow.prepare import prepare


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
    )
    assert counts == {"audit": 2, "finetune": len(lines) - 1}
    judged, texts = load_judgments(str(out), "audit")
    rows = [line.split("\t") for line in lines[1:3]]
    assert judged == {q: {d: int(g) for q2, d, g in rows if q2 == q} for q, _, _ in rows}
    assert set(texts) == set(judged) and all(texts.values())
    assert load_judgments(str(out), "finetune")[0].keys() >= judged.keys()


def test_no_judgments_configured_writes_an_empty_table(prepared, fixture_data, tmp_path):
    out = tmp_path / "judgments.parquet"
    assert prepare_judgments({"audit": None, "finetune": None}, "not-read", prepared / "corpus", out) == {
        "audit": 0,
        "finetune": 0,
    }
    assert load_judgments(str(out), "audit") == ({}, {})


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
            {"audit": str(audit), "finetune": None}, str(fixture_data["queries"]), prepared / "corpus", out
        )
    assert not out.exists()


def test_metrics_on_a_hand_ranking():
    grades = {"a": 2, "b": 1, "c": 0, "d": 2}
    ranked = ["x", "a", "c", "b"]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at(ranked, grades, 10) == pytest.approx(dcg / idcg)
    assert mrr_at(ranked, {"a", "d"}, 10) == 0.5
    assert recall_at(ranked, {"a", "d"}, 100) == 0.5
    quality = retrieval_quality({"q": ranked, "none": ["a"]}, {"q": grades, "none": {"a": 0}}, 2)
    assert quality["queries"] == 1 and quality["mrr@10"] == 0.5
