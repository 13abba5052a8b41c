"""BEIR readers: exact records, and one-line errors naming file and line for every kind of bad input."""

import gzip

import pytest

from negflow.beir import ReadStats, iter_corpus, iter_queries, read_qrels, unknown_ids_message
from negflow.errors import InputError


def write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def test_corpus_joins_title_like_sentence_transformers_and_skips_empty(tmp_path):
    path = write(
        tmp_path / "c.jsonl",
        '{"_id": "d1", "title": "Title", "text": "Body text."}\n'
        "\n"
        '{"_id": 7, "title": "", "text": " Only body "}\n'
        '{"_id": "d3", "text": "   "}\n',
    )
    stats = ReadStats()
    assert list(iter_corpus(path, stats)) == [("d1", "Title Body text."), ("7", "Only body")]
    assert (stats.rows, stats.empty, stats.empty_ids) == (3, 1, ["d3"])


def test_unicode_line_separators_inside_text_are_not_line_breaks(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"_id": "d1", "text": "a\u2028b\x85c"}\n')
    assert list(iter_corpus(path, ReadStats())) == [("d1", "a\u2028b\x85c")]


def test_gzipped_files_read_the_same(tmp_path):
    path = tmp_path / "q.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"_id": "q1", "text": "what is x"}\n')
    assert list(iter_queries(str(path), ReadStats())) == [("q1", "what is x")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', "c.jsonl:2: malformed JSON"),
        ('{"text": "x"}\n', "c.jsonl:1: missing '_id'"),
        ('{"_id": "a"}\n', "c.jsonl:1: missing 'text'"),
        ('{"_id": "a", "text": 5}\n', "c.jsonl:1: 'text' must be a string, got int"),
        ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', "c.jsonl:2: duplicate document id 'a'"),
        ('["a", "b"]\n', "c.jsonl:1: expected a JSON object, got list"),
    ],
)
def test_bad_corpus_lines_name_file_and_line(tmp_path, content, message):
    path = write(tmp_path / "c.jsonl", content)
    with pytest.raises(InputError) as err:
        list(iter_corpus(path, ReadStats()))
    assert message in str(err.value)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write(tmp_path / "c.jsonl", b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "\xff"}\n', "wb")
    with pytest.raises(InputError, match=r"c\.jsonl:2: not valid UTF-8"):
        list(iter_corpus(path, ReadStats()))


def test_duplicate_query_id(tmp_path):
    path = write(tmp_path / "q.jsonl", '{"_id": "q", "text": "a"}\n{"_id": "q", "text": "b"}\n')
    with pytest.raises(InputError, match=r"q\.jsonl:2: duplicate query id 'q'"):
        list(iter_queries(path, ReadStats()))


def test_qrels_with_crlf_and_blank_lines(tmp_path):
    path = write(tmp_path / "r.tsv", "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n\r\nq1\td2\t0\r\n")
    assert read_qrels(path) == [("q1", "d1", 1), ("q1", "d2", 0)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("q1\td1\t1\n", "r.tsv:1: expected the header 'query-id<TAB>corpus-id<TAB>score'"),
        ("query-id\tcorpus-id\tscore\nq1\td1\tx\n", "r.tsv:2: score 'x' is not an integer"),
        ("query-id\tcorpus-id\tscore\nq1 d1 1\n", "r.tsv:2: expected 3 tab-separated columns, got 1"),
        ("", "r.tsv: empty qrels file"),
    ],
)
def test_bad_qrels(tmp_path, content, message):
    path = write(tmp_path / "r.tsv", content)
    with pytest.raises(InputError) as err:
        read_qrels(path)
    assert message in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match=r"nope\.jsonl: file not found"):
        list(iter_corpus(str(tmp_path / "nope.jsonl"), ReadStats()))


def test_unknown_ids_message_counts_unique_ids_and_shows_first_five():
    msg = unknown_ids_message("corpus ids", "r.tsv", ["a", "b", "a", "c", "d", "e", "f"])
    assert msg == "r.tsv: 6 corpus ids not found (first: 'a', 'b', 'c', 'd', 'e', ...)"


def test_empty_corpus_is_refused_before_tokenizing(tmp_path):
    from negflow.prepare import stream_corpus

    path = write(tmp_path / "c.jsonl", '{"_id": "a", "text": ""}\n')
    with pytest.raises(InputError, match=r"c\.jsonl: the corpus has no documents with text"):
        stream_corpus(path, tmp_path / "c.arrow")


def test_hub_dataset_id_offline_fails_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as err:
        list(iter_corpus("negflow-test/no-such-dataset", ReadStats()))
    assert str(err.value).startswith("hub dataset negflow-test/no-such-dataset (corpus): cannot load")
    assert "\n" not in str(err.value)
