"""Input that used to crash with a traceback or pass unnoticed: each is one line naming the file and line,
and nothing is written (the end-to-end cases, through Snakemake, are in test_bad_input.py)."""

from __future__ import annotations

import gzip
import io

import pytest
from test_read_pairs import run

from negflow import pair_shapes
from negflow.beir import ReadStats, iter_corpus
from negflow.errors import InputError


def truncated_gzip(path, lines: list[bytes]) -> None:
    data = gzip.compress(b"".join(lines))
    path.write_bytes(data[: len(data) * 2 // 3])


def corrupt_gzip(path, lines: list[bytes]) -> None:
    data = bytearray(gzip.compress(b"".join(lines)))
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))


PAIR_LINES = [b'["query %d", "passage number %d about something"]\n' % (i, i) for i in range(5000)]


@pytest.mark.parametrize("damage", [truncated_gzip, corrupt_gzip])
def test_a_damaged_gzip_pair_file_is_one_line(tmp_path, damage):
    pairs = tmp_path / "pairs.jsonl.gz"
    damage(pairs, PAIR_LINES)
    with pytest.raises(InputError) as err:
        run(tmp_path, "out", pairs)
    message = str(err.value)
    assert message.startswith(f"{pairs}: after line ") and ": truncated or corrupt gzip data (" in message
    assert "\n" not in message
    assert not any((tmp_path / "out").glob("*.parquet"))


@pytest.mark.parametrize("damage", [truncated_gzip, corrupt_gzip])
def test_a_damaged_gzip_corpus_is_one_line(tmp_path, damage):
    corpus = tmp_path / "corpus.jsonl.gz"
    damage(corpus, [b'{"_id": "d%d", "text": "document %d"}\n' % (i, i) for i in range(20000)])
    with pytest.raises(InputError) as err:
        list(iter_corpus(str(corpus), ReadStats()))
    message = str(err.value)
    assert message.startswith(f"{corpus}") and "\n" not in message
    if damage is truncated_gzip:  # a corrupt stream may inflate to garbage first: a malformed line, named
        assert message.startswith(f"{corpus}: after line ") and "truncated or corrupt gzip data" in message


def test_an_unpaired_surrogate_escape_is_one_line_naming_its_line(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "text": "fine \\ud83d\\ude00"}\n{"_id": "b", "text": "bad \\ud800 here"}\n')
    with pytest.raises(InputError) as err:
        list(iter_corpus(str(corpus), ReadStats()))
    assert str(err.value) == f"{corpus}:2: a lone surrogate escape (\\uD800-\\uDFFF without its pair) is no text"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('["q", "fine \\ud83d\\ude00"]\n["q2", "bad \\ud800"]\n')
    with pytest.raises(InputError, match=rf"^{pairs}:2: malformed JSON \(no low surrogate in string"):
        run(tmp_path, "out", pairs)


def test_a_line_over_the_limit_is_refused_and_long_lines_are_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(pair_shapes, "BLOCK_BYTES", 1 << 10)
    monkeypatch.setattr(pair_shapes, "MAX_LINE_BYTES", 1 << 20)
    lines = [b"a" * 5000, b"b", b"c" * (900 << 10), b"", b"d" * 3000]
    blocks = list(pair_shapes._line_blocks(io.BytesIO(b"\n".join(lines) + b"\n"), "f.jsonl"))
    assert b"\n".join(blocks).split(b"\n") == lines  # every line whole, across many reads
    for size in (1, 2, 3, 4, 7):  # a byte-order mark is dropped whatever the read size
        monkeypatch.setattr(pair_shapes, "BLOCK_BYTES", size)
        data = io.BytesIO(b"\xef\xbb\xbf[1]\n[22]\n[333]")
        assert b"\n".join(pair_shapes._line_blocks(data, "f.jsonl")) == b"[1]\n[22]\n[333]"
    monkeypatch.setattr(pair_shapes, "BLOCK_BYTES", 1 << 10)

    pairs = tmp_path / "array.json"  # one JSON array saved as .json: read as JSON Lines, it is one long line
    pairs.write_text("[" + ", ".join(f'["query {i}", "passage {i}"]' for i in range(60000)) + "]\n")
    with pytest.raises(InputError) as err:
        run(tmp_path, "out", pairs)
    assert str(err.value) == (
        f"{pairs}:1: a line over 1 MiB; pair files are JSON Lines, one record a line (a file holding one JSON "
        "array is not)"
    )


def test_an_empty_file_a_byte_order_mark_and_nul_bytes(tmp_path):
    """Decided: an empty pair file (or one of blank lines) is an error; a UTF-8 byte-order mark opening a
    file is dropped; a NUL byte is text when escaped (JSON's \\u0000) and malformed JSON when raw."""
    for content in (b"", b"\n\n  \n"):
        empty = tmp_path / "empty.jsonl"
        empty.write_bytes(content)
        with pytest.raises(InputError, match=rf"^{empty}: no pairs to read$"):
            run(tmp_path, "empty", empty)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf["q", "p"]\n["q2", "p2"]\n')
    _, result = run(tmp_path, "bom", bom)
    assert (result["counts"]["records"], result["counts"]["queries"]) == (2, 2)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'\xef\xbb\xbf{"_id": "a", "text": "first"}\n{"_id": "b", "text": "nul \\u0000 escaped"}\n')
    assert list(iter_corpus(str(corpus), ReadStats())) == [("a", "first"), ("b", "nul \x00 escaped")]
    corpus.write_bytes(b'{"_id": "a", "text": "first"}\n{"_id": "b", "text": "raw \x00 nul"}\n')
    with pytest.raises(InputError, match=rf"^{corpus}:2: malformed JSON \(Invalid control character"):
        list(iter_corpus(str(corpus), ReadStats()))
    pairs = tmp_path / "nul.jsonl"
    pairs.write_bytes(b'["q", "p"]\n["q2", "raw \x00 nul"]\n')
    with pytest.raises(InputError, match=rf"^{pairs}:2: malformed JSON"):
        run(tmp_path, "nul", pairs)


def test_empty_sets_are_counted_and_one_column_is_never_both_anchor_and_positive(tmp_path, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    sets = tmp_path / "sets.jsonl"
    sets.write_text('{"set": ["a", "b"]}\n{"set": []}\n{"set": ["c", "d", "e"]}\n')
    with caplog.at_level("WARNING", logger="negflow"):
        _, result = run(tmp_path, "sets", sets)
    assert (result["counts"]["empty_sets"], result["counts"]["queries"]) == (1, 2)
    assert "skipped: 1 empty sets" in caplog.text

    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"q": ["q1"], "question": ["q1 again"], "negative": ["n1"]}), table)
    with pytest.raises(InputError) as err:
        run(tmp_path, "both", table, anchor_column="question")
    assert str(err.value) == (
        f"{table}: column 'question' would be both the anchor and the positive; set positive_column "
        "(columns: ['q', 'question', 'negative'])"
    )
    out, result = run(tmp_path, "neg", table, anchor_column="q", positive_column="question")
    assert result["counts"]["given_negatives_read"] == 1  # `negative` is read whatever the anchor is named


def test_ids_are_pinned_known_answers_and_carried_ids_are_kept(tmp_path):
    """XXH3-128 of the normalised text's UTF-8, pinned as constants (the empty string's is the XXH3
    specification's own test vector), so a change of hash or normalisation fails here; ids the data carries
    (Tevatron's query_id and docid) are kept as given."""
    import json

    import pyarrow.parquet as pq

    from negflow.text_ids import text_hash

    assert text_hash("") == "99aa06d3014798d86001c324468d497f"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps(["  Cafe\u0301 ", "hello world"]) + "\n" + json.dumps(["what is a hard negative?", "x"])
    )
    out, _ = run(tmp_path, "hashed", pairs)
    queries = dict(zip(*pq.read_table(out.queries).to_pydict().values(), strict=True))
    assert queries == {
        "209ca0278414df3fb2af2d7750e7746a": "Caf\u00e9",  # NFC, trimmed
        "6b0cba0b7ea60f0f8554ea1a9ec759f0": "what is a hard negative?",
    }
    assert pq.read_table(out.corpus)["_id"].to_pylist()[0] == "df8d09e93f874900a99b8775cc15b6c7"

    tevatron = tmp_path / "tevatron.jsonl"
    line = {
        "query_id": "Q7",
        "query": "q seven",
        "positive_passages": [{"docid": "D9", "title": "T", "text": "nine"}],
        "negative_passages": [{"docid": "D10", "title": "", "text": "ten"}],
    }
    tevatron.write_text(json.dumps(line) + "\n")
    out, _ = run(tmp_path, "carried", tevatron)
    assert pq.read_table(out.queries).to_pylist() == [{"_id": "Q7", "text": "q seven"}]
    assert sorted(pq.read_table(out.corpus).to_pylist(), key=lambda r: r["_id"]) == [
        {"_id": "D10", "text": "ten"},
        {"_id": "D9", "text": "T nine"},
    ]


def test_corpus_ids_merged_by_equal_texts_are_counted_and_mapped(tmp_path, caplog):
    import json

    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus.jsonl"
    docs = [("D1", "shared text"), ("D2", "other"), ("D3", "shared text"), ("D4", " shared text "), ("D1", "x")]
    corpus.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in docs[:4]))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('["q", "other"]\n')
    with caplog.at_level("WARNING", logger="negflow"):
        out, result = run(tmp_path, "merged", pairs, corpus)
    assert result["counts"]["document_ids_merged"] == 2
    assert "2 document ids name a text an earlier document already has" in caplog.text
    rows = {r["doc_id"]: r["merged_ids"] for r in pq.read_table(out.doc_hashes).to_pylist()}
    assert rows == {"D1": ["D3", "D4"], "D2": []}
    corpus.write_text(corpus.read_text() + json.dumps({"_id": "D2", "text": "shared text"}) + "\n")
    with pytest.raises(InputError, match="^document id 'D2' names 2 different texts$"):
        run(tmp_path, "clash", pairs, corpus)  # D2 first named "other"


def test_a_hub_pair_dataset_is_pinned_or_warned_and_its_revision_recorded(caplog):
    """Offline here: the hub load fails (one line), after the floating reference was logged; the
    fingerprint of an uncached hub dataset records the configured revision."""
    from negflow.provenance import data_fingerprint

    with (
        caplog.at_level("WARNING", logger="negflow"),
        pytest.raises(InputError, match="^hub dataset org/pairs: cannot"),
    ):
        pair_shapes._load_table_source("org/pairs", "main")
    assert "hub pair dataset org/pairs at main, a floating reference" in caplog.text
    caplog.clear()
    commit = "0123456789abcdef0123456789abcdef01234567"
    with caplog.at_level("WARNING", logger="negflow"), pytest.raises(InputError):
        pair_shapes._load_table_source("org/pairs", commit)
    assert "floating reference" not in caplog.text
    assert data_fingerprint("org/pairs", commit) == {"hub_id": "org/pairs", "configured_revision": commit}
