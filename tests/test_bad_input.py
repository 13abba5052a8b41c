"""Bad input end to end, for what needs Snakemake: the configuration and model checks that run while the
DAG is built, and one bad data line, which must reach the terminal as one line naming the file and line,
before the embed stage, leaving nothing under results/ (the data checks themselves are unit tests in
test_beir.py and test_prepare.py). The cases that are only suspicious warn, count and go on."""

from __future__ import annotations

import gzip
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


def malformed_json(block, tmp_path, models):
    changed, path = _edit_jsonl(block, "corpus", tmp_path, 6, lambda d: json.dumps(d)[:-3])
    return changed, f"{path}:6: malformed JSON"


def lone_surrogate(block, tmp_path, models):
    changed, path = _edit_jsonl(
        block, "corpus", tmp_path, 4, lambda d: json.dumps({**d, "text": "x"}).replace("x", "\\ud800")
    )
    return changed, f"{path}:4: a lone surrogate escape (\\uD800-\\uDFFF without its pair) is no text"


def truncated_gzip_corpus(block, tmp_path, models):
    data = gzip.compress(Path(block["corpus"]).read_bytes())
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    return {"corpus": str(path)}, f"{path}: after line "


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
    lone_surrogate,
    truncated_gzip_corpus,
    corpus_smaller_than_candidates,
    model_folder_missing,
    model_folder_without_a_model,
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


def test_a_bad_audit_qrels_stops_the_run_before_the_embed_stage(tmp_path, dataset_block):
    """The audit runs last, but its qrels are checked right after prepare: embed waits for that check."""
    lines = _lines(dataset_block["qrels"])
    audit = _write(tmp_path / "audit.tsv", [*lines[:3], f"{lines[1].split(chr(9))[0]}\tnot-a-doc\t1"])
    write_config(tmp_path, {"bad": {**dataset_block, "audit_qrels": str(audit)}})
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    assert f"negflow error: {audit}: 1 corpus ids not found (first: 'not-a-doc')" in proc.stdout + proc.stderr
    assert not (tmp_path / "logs/embed").exists()
    assert not (tmp_path / "results/bad/prepare/judgments.parquet").exists()
