"""Bad input end to end: every case stops with one line naming the file and line (or id) before the embed
stage, and leaves nothing under results/; the cases that are only suspicious warn, count and go on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import snakemake, write_config

pytestmark = pytest.mark.slow  # every test here runs Snakemake or the real model


def _lines(path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _edit_jsonl(block, key, tmp_path, line_no, edit) -> tuple[dict, str]:
    """Copy the block's `key` file with line `line_no` (1-based) replaced by edit(original object)."""
    lines = _lines(block[key])
    lines[line_no - 1] = edit(json.loads(lines[line_no - 1]))
    path = _write(tmp_path / Path(block[key]).name, lines)
    return {key: str(path)}, str(path)


def _edit_qrels(block, tmp_path, edit) -> tuple[dict, str]:
    path = _write(tmp_path / "qrels.tsv", edit(_lines(block["qrels"])))
    return {"qrels": str(path)}, str(path)


def malformed_json(block, tmp_path, models):
    changed, path = _edit_jsonl(block, "corpus", tmp_path, 6, lambda d: json.dumps(d)[:-3])
    return changed, f"{path}:6: malformed JSON"


def missing_id(block, tmp_path, models):
    changed, path = _edit_jsonl(block, "corpus", tmp_path, 3, lambda d: json.dumps({"text": d["text"]}))
    return changed, f"{path}:3: missing '_id'"


def missing_text(block, tmp_path, models):
    changed, path = _edit_jsonl(block, "queries", tmp_path, 2, lambda q: json.dumps({"_id": q["_id"]}))
    return changed, f"{path}:2: missing 'text'"


def non_string_text(block, tmp_path, models):
    changed, path = _edit_jsonl(block, "corpus", tmp_path, 4, lambda d: json.dumps({**d, "text": 123}))
    return changed, f"{path}:4: 'text' must be a string, got int"


def duplicate_corpus_id(block, tmp_path, models):
    first = json.loads(_lines(block["corpus"])[0])["_id"]
    changed, path = _edit_jsonl(block, "corpus", tmp_path, 7, lambda d: json.dumps({**d, "_id": first}))
    return changed, f"{path}:7: duplicate document id '{first}'"


def duplicate_query_id(block, tmp_path, models):
    first = json.loads(_lines(block["queries"])[0])["_id"]
    changed, path = _edit_jsonl(block, "queries", tmp_path, 3, lambda q: json.dumps({**q, "_id": first}))
    return changed, f"{path}:3: duplicate query id '{first}'"


def non_utf8(block, tmp_path, models):
    raw = Path(block["corpus"]).read_bytes().split(b"\n")
    raw[4] = raw[4].replace(b'"text": "', b'"text": "\xff\xfe', 1)
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"\n".join(raw))
    return {"corpus": str(path)}, f"{path}:5: not valid UTF-8 (invalid start byte at byte"


def qrels_without_header(block, tmp_path, models):
    changed, path = _edit_qrels(block, tmp_path, lambda lines: lines[1:])
    return changed, f"{path}:1: expected the header 'query-id<TAB>corpus-id<TAB>score'"


def qrels_non_integer_score(block, tmp_path, models):
    def edit(lines):
        q, d, _ = lines[2].split("\t")
        return [*lines[:2], f"{q}\t{d}\t1.5", *lines[3:]]

    changed, path = _edit_qrels(block, tmp_path, edit)
    return changed, f"{path}:3: score '1.5' is not an integer"


def qrels_unknown_doc_ids(block, tmp_path, models):
    q = _lines(block["qrels"])[1].split("\t")[0]
    changed, path = _edit_qrels(block, tmp_path, lambda lines: [*lines, f"{q}\tnot-a-doc\t1", f"{q}\talso-missing\t1"])
    return changed, f"{path}: 2 corpus ids not found (first: 'not-a-doc', 'also-missing')"


def qrels_unknown_query_ids(block, tmp_path, models):
    d = _lines(block["qrels"])[1].split("\t")[1]
    changed, path = _edit_qrels(block, tmp_path, lambda lines: [*lines, f"nobody\t{d}\t1"])
    return changed, f"{path}: 1 query ids not found (first: 'nobody')"


def no_query_has_a_positive(block, tmp_path, models):
    def edit(lines):
        return [lines[0], *(line.rsplit("\t", 1)[0] + "\t0" for line in lines[1:])]

    changed, path = _edit_qrels(block, tmp_path, edit)
    return changed, f"{path}: no query has a positive (score >= 1); nothing to mine"


def corpus_smaller_than_candidates(block, tmp_path, models):
    path = _write(tmp_path / "corpus.jsonl", _lines(block["corpus"])[:150])
    return (
        {"corpus": str(path), "candidates": 200, "num_negatives": 4},
        f"config: datasets.bad.candidates: 200 candidates per query asked for, but {path} holds only 120 documents",
    )


def model_folder_missing(block, tmp_path, models):
    return (
        {"embedding": str(tmp_path / "no-model")},
        f"config: datasets.bad.embedding: model folder '{tmp_path / 'no-model'}' does not exist",
    )


def model_folder_without_a_model(block, tmp_path, models):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "README.md").write_text("not a model\n")
    return (
        {"embedding": str(folder)},
        f"config: datasets.bad.embedding: '{folder}' is not a sentence-transformers model (no modules.json or "
        "config.json)",
    )


def model_folder_that_does_not_load(block, tmp_path, models):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}\n')
    return {"embedding": str(folder)}, f"embedding model '{folder}': cannot load as a SentenceTransformer ("


def embedding_model_given_as_cross_encoder(block, tmp_path, models):
    folder = models["embedder"]
    return (
        {"ce": str(folder)},
        f"config: datasets.bad.ce: '{folder}' is not a 1-label CrossEncoder (architectures ['BertModel'], labels: 1)",
    )


def unknown_config_key(block, tmp_path, models):
    return {"num_negativs": 3}, "config: datasets.bad: unknown key 'num_negativs' (did you mean 'num_negatives'?)"


def wrong_config_type(block, tmp_path, models):
    return {"num_negatives": "eight"}, "config: datasets.bad.num_negatives: 'eight' is not of type 'integer'"


def range_min_not_below_range_max(block, tmp_path, models):
    return {"range_min": 30, "range_max": 30}, "config: datasets.bad: range_max (30) must be above range_min (30)"


def num_negatives_above_the_window(block, tmp_path, models):
    return (
        {"range_min": 10, "range_max": 15, "num_negatives": 8},
        "config: datasets.bad.num_negatives: 8 negatives cannot come from a window of 5 candidates (ranks 10-15",
    )


CASES = [
    malformed_json,
    missing_id,
    missing_text,
    non_string_text,
    duplicate_corpus_id,
    duplicate_query_id,
    non_utf8,
    qrels_without_header,
    qrels_non_integer_score,
    qrels_unknown_doc_ids,
    qrels_unknown_query_ids,
    no_query_has_a_positive,
    corpus_smaller_than_candidates,
    model_folder_missing,
    model_folder_without_a_model,
    model_folder_that_does_not_load,
    embedding_model_given_as_cross_encoder,
    unknown_config_key,
    wrong_config_type,
    range_min_not_below_range_max,
    num_negatives_above_the_window,
]


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_stops_with_one_line_before_embedding(case, tmp_path, dataset_block, tiny_models):
    data = tmp_path / "data"
    data.mkdir()
    changed, message = case(dataset_block, data, tiny_models)
    write_config(tmp_path, {"bad": {**dataset_block, **changed}})
    proc = snakemake(tmp_path, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    error_lines = [line for line in output.splitlines() if message in line]
    assert error_lines, f"expected {message!r} in:\n{output[-3000:]}"
    assert all(len(line) < 400 for line in error_lines)
    assert not (tmp_path / "logs/embed").exists()
    assert _files_under(tmp_path / "results") == []


def test_empty_texts_warn_skip_and_count(tmp_path, dataset_block):
    corpus = _lines(dataset_block["corpus"])
    doc = json.loads(corpus[9])
    corpus[9] = json.dumps({**doc, "title": "", "text": "   "})
    corpus_path = _write(tmp_path / "corpus.jsonl", corpus)
    write_config(tmp_path, {"ok": {**dataset_block, "corpus": str(corpus_path)}})
    snakemake(tmp_path, "results/ok/prepare/manifest.json")
    log = (tmp_path / "logs/prepare/ok.log").read_text()
    assert f"corpus: {len(corpus)} documents read, {len(corpus) - 1} kept, 1 empty skipped" in log
    from negflow.store import load_table

    ids = load_table(tmp_path / "results/ok/prepare/corpus", ["id"])["id"].to_pylist()
    assert len(ids) == len(corpus) - 1 and doc["_id"] not in ids


def test_ten_megabyte_document_is_truncated_by_the_tokenizer(tmp_path, dataset_block):
    corpus = _lines(dataset_block["corpus"])
    huge = {"_id": "huge", "title": "", "text": "module function value " * 480_000}
    assert len(huge["text"]) > 10_000_000
    corpus_path = _write(tmp_path / "corpus.jsonl", [*corpus, json.dumps(huge)])
    write_config(tmp_path, {"ok": {**dataset_block, "corpus": str(corpus_path)}})
    snakemake(tmp_path, "results/ok/prepare/manifest.json")
    from negflow.store import load_table

    table = load_table(tmp_path / "results/ok/prepare/corpus", ["id", "length"])
    lengths = dict(zip(table["id"].to_pylist(), table["length"].to_pylist(), strict=True))
    assert lengths["huge"] == 96  # the fixture embedder's max_seq_length
    assert max(lengths.values()) == 96
