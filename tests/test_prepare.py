"""prepare: which queries and qrels it keeps, the hold-out and the manifest; its checks of the qrels against
the corpus and queries: one line naming the file, raised before the model loads (the model reference there is
a folder that does not exist), nothing left behind."""

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from negflow.errors import InputError
from negflow.prepare import prepare
from negflow.store import load_table


def _qrels(fixture_data, tmp_path, edit) -> Path:
    lines = Path(fixture_data["qrels"]).read_text().splitlines()
    path = tmp_path / "qrels.tsv"
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


def _first(lines, column):
    return lines[1].split("\t")[column]


CASES = {
    "unknown_doc_ids": (
        lambda lines: [*lines, f"{_first(lines, 0)}\tnot-a-doc\t1", f"{_first(lines, 0)}\talso-missing\t1"],
        ": 2 corpus ids not found (first: 'not-a-doc', 'also-missing')",
    ),
    "unknown_query_ids": (
        lambda lines: [*lines, f"nobody\t{_first(lines, 1)}\t1"],
        ": 1 query ids not found (first: 'nobody')",
    ),
    "no_positive": (
        lambda lines: [lines[0], *(line.rsplit("\t", 1)[0] + "\t0" for line in lines[1:])],
        ": no query has a positive (score >= 1); nothing to mine",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_qrels_that_do_not_match_stop_before_the_model_loads(fixture_data, tmp_path, case):
    edit, message = CASES[case]
    qrels = _qrels(fixture_data, tmp_path, edit)
    out = tmp_path / "out"
    outputs = [str(out / n) for n in ("corpus", "queries", "qrels", "holdout.parquet", "manifest.json")]
    with pytest.raises(InputError) as err:
        prepare(
            str(fixture_data["corpus"]),
            str(fixture_data["queries"]),
            str(qrels),
            str(tmp_path / "no-model"),  # loading it would fail with another message
            None,
            None,
            64,
            1,
            False,
            3,
            *outputs,
        )
    assert str(err.value) == f"{qrels}{message}"
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_prepare_keeps_queries_with_positives_and_all_their_qrels(staged, fixture_data):
    out, _ = staged
    queries = load_table(out / "queries", ["id"])["id"].to_pylist()
    assert "q-unjudged" not in queries
    qrels = load_table(out / "qrels", ["query_id", "doc_id", "score", "positive"]).to_pylist()
    lines = fixture_data["qrels"].read_text().splitlines()[1:]
    held = pq.read_table(out / "holdout.parquet").to_pylist()  # the staged run hides q0's weaker positive
    assert len(qrels) == len(lines) - len(held) == len(lines) - 1
    assert {(r["query_id"], r["doc_id"], r["score"], r["positive"]) for r in qrels} == {
        (q, d, int(s), int(s) >= 1)
        for q, d, s in (line.split("\t") for line in lines)
        if (q, d) != (held[0]["query_id"], held[0]["doc_id"])
    }


def test_holdout_hides_all_but_one_top_graded_positive(staged, fixture_data):
    out, _ = staged
    held = pq.read_table(out / "holdout.parquet").to_pylist()
    qrels = pq.read_table(out / "qrels.parquet").to_pylist()
    # the fixture's q0 has positives graded 1 and 2: the grade-2 one stays visible
    assert held == [{"query_id": "q0", "doc_id": held[0]["doc_id"], "score": 1}]
    visible = [r for r in qrels if r["query_id"] == "q0" and r["positive"]]
    assert [r["score"] for r in visible] == [2]
    assert held[0]["doc_id"] not in {r["doc_id"] for r in qrels}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["query_prompt"] == "query: " and manifest["embedding_seq_len"] == 64
    assert manifest["inputs"]["qrels"]["sha256"] == hashlib.sha256(fixture_data["qrels"].read_bytes()).hexdigest()


def test_prompts_chosen_by_name_are_the_models_own_and_recorded_as_text(fixture_data, tiny_models, tmp_path):
    """query_prompt_name / doc_prompt_name pick from the model's `prompts` as sentence-transformers'
    prompt_name does; the manifest records the text. A name the model lacks stops prepare before it tokenizes
    anything, listing the names it has."""
    from sentence_transformers import SentenceTransformer

    from negflow.errors import ConfigError

    model = SentenceTransformer(str(tiny_models["embedder"]), device="cpu")
    model.prompts = {"query": "query: ", "doc": "passage: "}
    ref = str(tmp_path / "with-prompts")
    model.save(ref)
    data = [str(fixture_data[key]) for key in ("corpus", "queries", "qrels")]

    def run(out, **names):
        outputs = [str(out / n) for n in ("corpus", "queries", "qrels", "holdout.parquet", "manifest.json")]
        prepare(*data, ref, None, None, 64, 1, False, 3, *outputs, **names)

    run(tmp_path / "out", query_prompt_name="query", doc_prompt_name="doc")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["query_prompt"], manifest["doc_prompt"]) == ("query: ", "passage: ")
    prepared = load_table(tmp_path / "out" / "corpus", ["text", "input_ids"]).slice(0, 3).to_pylist()
    model.max_seq_length = 64
    for row in prepared:
        assert row["input_ids"] == model.preprocess([row["text"]], prompt="passage: ")["input_ids"][0].tolist()

    with pytest.raises(ConfigError) as err:
        run(tmp_path / "bad", doc_prompt_name="passage")
    assert str(err.value) == (  # sentence-transformers adds an empty 'document' prompt to every model
        f"config: doc_prompt_name: embedding model '{ref}' has no prompt 'passage' "
        "(its prompts: 'query', 'document', 'doc')"
    )
    assert [p for p in (tmp_path / "bad").rglob("*") if p.is_file()] == []
