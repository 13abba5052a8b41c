"""Candidate sources: BM25 against the formula, a run file read and refused by file:line, and the fusion of
sources (union, reciprocal rank fusion, exact cosines) against a direct computation."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negflow import bm25 as bm25_module
from negflow import sources
from negflow.bm25 import index_bm25, search_bm25, tokenizer
from negflow.errors import InputError
from negflow.sources import (
    RRF_K,
    _arrow_columns,
    _run_lines,
    fuse_candidates,
    read_run,
    run_columns,
    source_name,
)
from negflow.store import ShardedEmbeddings, load_table

BM25 = {"bm25_k1": 1.2, "bm25_b": 0.75, "bm25_stemmer": "english", "bm25_stopwords": "en"}


def write_prepared(folder: Path, table: pa.Table) -> str:
    """A table in prepare's layout (Arrow stream files listed in state.json), as load_table reads it."""
    folder.mkdir(parents=True)
    with pa.ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    return str(folder)


def bm25_by_formula(docs: list[list[str]], query: list[str], k1: float, b: float) -> np.ndarray:
    """Lucene's BM25 (what bm25s computes by default; Kamphuis et al. 2020), from its definition: idf =
    ln(1 + (N - df + 0.5) / (df + 0.5)) times tf / (tf + k1 (1 - b + b |d| / avgdl)), summed over the
    query's words (a repeated word counts again)."""
    n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    df = Counter(term for doc in docs for term in set(doc))
    scores = np.zeros(n)
    for i, doc in enumerate(docs):
        tf = Counter(doc)
        for term in query:
            if tf[term]:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                scores[i] += idf * tf[term] / (tf[term] + k1 * (1 - b + b * len(doc) / avgdl))
    return scores


@pytest.mark.parametrize(
    "settings", [BM25, {"bm25_k1": 0.9, "bm25_b": 0.4, "bm25_stemmer": None, "bm25_stopwords": None}]
)
def test_the_bm25_index_is_bm25s_own_index_byte_for_byte_built_batch_by_batch(tmp_path, monkeypatch, settings):
    """index_bm25 builds the index without holding the corpus' tokens (spilled batches, memory-mapped CSC
    arrays); every file it writes equals what bm25s's own `index` and `save` write from all the tokens at
    once, over many batches, with empty, stopword-only and non-ASCII documents."""
    import bm25s

    rng = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(2000)] + ["the", "and", "running", "runs", "ran", "Ünïcode", "wörds"]
    texts = [" ".join(rng.choice(vocabulary, size=rng.integers(0, 60))) for _ in range(1500)]
    texts[3:3] = ["", "the and of", "Ünïcode wörds running"]
    corpus = write_prepared(tmp_path / "corpus", pa.table({"text": texts}))
    monkeypatch.setattr(bm25_module, "TOKENIZE_ROWS", 100)
    index_bm25(corpus, settings, str(tmp_path / "index"))

    words = tokenizer(settings)
    ids = words.tokenize(texts, update_vocab=True, show_progress=False)
    reference = bm25s.BM25(k1=settings["bm25_k1"], b=settings["bm25_b"])
    reference.index(bm25s.tokenization.Tokenized(ids=ids, vocab=words.get_vocab_dict()), show_progress=False)
    reference.save(str(tmp_path / "bm25s"))
    words.save_vocab(str(tmp_path / "bm25s"))
    written = sorted(p.name for p in (tmp_path / "index").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "bm25s").iterdir())
    assert "data.csc.index.npy" in written
    for name in written:
        assert (tmp_path / "index" / name).read_bytes() == (tmp_path / "bm25s" / name).read_bytes(), name


@pytest.mark.parametrize("scan_share", [0, 10**9])  # every query by its postings; every query by a scan
def test_bm25_returns_the_best_documents_by_the_formula_without_the_querys_qrels_documents(
    staged, tmp_path, monkeypatch, scan_share
):
    """Each query on the one reused score array, in both ways of finding the documents a query touched (a
    score left over from the query before would show here)."""
    monkeypatch.setattr(bm25_module, "SCAN_SHARE", scan_share)
    out, _ = staged
    index_bm25(str(out / "corpus"), BM25, str(tmp_path / "index"))
    counts = search_bm25(
        str(tmp_path / "index"), *(str(out / p) for p in ("queries", "corpus", "qrels")), BM25, 7, str(tmp_path / "c")
    )
    got = pq.read_table(tmp_path / "c").to_pylist()
    words = tokenizer(BM25)
    doc_tokens = words.tokenize(load_table(out / "corpus", ["text"])["text"].to_pylist(), return_as="string")
    query_texts = load_table(out / "queries", ["text"])["text"].to_pylist()
    qrels = pq.read_table(out / "qrels.parquet").to_pylist()
    judged = {(r["query_row"], r["doc_row"]) for r in qrels}
    checked = 0
    for q, text in enumerate(query_texts):
        terms = tokenizer(BM25).tokenize([text], return_as="string")[0]
        scores = bm25_by_formula(doc_tokens, terms, BM25["bm25_k1"], BM25["bm25_b"])
        rows = [r for r in got if r["query_row"] == q]
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        expected = [d for d in np.lexsort((np.arange(len(scores)), -scores)) if (q, d) not in judged and scores[d] > 0]
        assert len(rows) == min(7, len(expected))
        np.testing.assert_allclose([r["score"] for r in rows], scores[expected[: len(rows)]], rtol=1e-4)
        # the same documents, except where two score within float32 rounding of each other
        want = {d for d in expected[: len(rows)]}
        for r in rows:
            assert r["doc_row"] in want or abs(scores[r["doc_row"]] - scores[expected[len(rows) - 1]]) < 1e-4
            assert (q, r["doc_row"]) not in judged
        checked += len(rows)
    assert checked == counts["candidates"] > 100 and counts["queries_without_terms"] == 0
    dirs = (str(out / p) for p in ("queries", "corpus", "qrels"))
    search_bm25(str(tmp_path / "index"), *dirs, BM25, 7, str(tmp_path / "threads"), threads=3)
    assert pq.read_table(tmp_path / "threads").equals(pq.read_table(tmp_path / "c"))  # threads change nothing


def test_a_query_of_stopwords_only_gets_no_bm25_candidates_and_is_counted(staged, tmp_path):
    out, _ = staged
    index_bm25(str(out / "corpus"), BM25, str(tmp_path / "index"))
    queries = pa.table({"id": ["words", "stop", "unknown"], "text": ["return the list", "the and of a", "zzqx"]})
    qrels = pa.table(
        {
            "query_id": pa.array([], pa.string()),
            "doc_id": pa.array([], pa.string()),
            "doc_row": pa.array([], pa.int64()),
            "score": pa.array([], pa.int32()),
            "positive": pa.array([], pa.bool_()),
        }
    )
    counts = search_bm25(
        str(tmp_path / "index"),
        write_prepared(tmp_path / "queries", queries),
        str(out / "corpus"),
        write_prepared(tmp_path / "qrels", qrels),
        BM25,
        5,
        str(tmp_path / "c"),
    )
    got = pq.read_table(tmp_path / "c")
    assert counts == {"queries": 3, "candidates": 5, "queries_without_terms": 2}
    assert set(got["query_id"].to_pylist()) == {"words"}


def test_a_run_file_is_read_per_query_by_score_without_qrels_documents(staged, fixture_data, tmp_path):
    out, _ = staged
    query_ids = load_table(out / "queries", ["id"])["id"].to_pylist()
    doc_ids = load_table(out / "corpus", ["id"])["id"].to_pylist()
    qrels = pq.read_table(out / "qrels.parquet").to_pylist()
    q, positive = qrels[0]["query_id"], qrels[0]["doc_id"]
    others = [d for d in doc_ids if d != positive]
    lines = [
        f"{q} Q0 {others[0]} 3 1.5 mine",
        f"{q} Q0 {positive} 1 9.0 mine",  # a qrels document: left out
        f"{q} Q0 {others[1]} 2 2.5 mine",
        f"{q} Q0 {others[2]} 4 1.5 mine",  # ties others[0] on score: the file's rank decides
        f"{q} Q0 {others[1]} 9 0.1 mine",  # a repeated pair keeps its best line
        f"{query_ids[-1]} Q0 {others[3]} 1 -0.5 mine",
        f"q-unjudged Q0 {others[4]} 1 5.0 mine",  # a query of the queries file that is not mined: skipped
    ]
    run = tmp_path / "bm25 run.trec"
    run.write_text("\n".join(lines) + "\n")
    dirs = [str(out / p) for p in ("queries", "corpus", "qrels")]
    counts = read_run(str(run), *dirs, 2, str(tmp_path / "t.parquet"), str(fixture_data["queries"]))
    got = pq.read_table(tmp_path / "t.parquet").to_pylist()
    assert [(r["query_id"], r["doc_id"], r["rank"], r["score"]) for r in got] == [
        (q, others[1], 1, 2.5),
        (q, others[0], 2, 1.5),  # others[2] is third and beyond 2 per query
        (query_ids[-1], others[3], 1, -0.5),
    ]
    assert [r["doc_row"] for r in got] == [doc_ids.index(r["doc_id"]) for r in got]
    assert counts == {
        "lines": 7,
        "lines_of_queries_not_mined": 1,
        "queries": 2,
        "candidates": 3,
        "dropped_qrels_documents": 1,
    }
    assert source_name({"run": str(run)}) == "run_bm25_run"

    jsonl = tmp_path / "run.jsonl"
    jsonl.write_text("".join(json.dumps({"query_id": q, "doc_id": d, "score": s}) + "\n" for d, s in [(others[5], 3)]))
    read_run(str(jsonl), *dirs, 2, str(tmp_path / "j.parquet"))
    assert pq.read_table(tmp_path / "j.parquet")["doc_id"].to_pylist() == [others[5]]


@pytest.mark.parametrize(
    "line, message",
    [
        (
            "QX Q0 {d} 1 1.0 t",
            "{run}:3: query 'QX' is not in the dataset's query table (1 lines name an unknown query)",
        ),
        ("{q} Q0 DX 1 1.0 t", "{run}:3: document 'DX' is not in the dataset's document table"),
        ("{q} Q0 {d} 1 t", "{run}:3: not a run line (5 fields, a TREC run line has 6: qid Q0 docid rank score"),
        ("{q} Q0 {d} 1 nan t", "{run}:3: score is NaN"),
    ],
)
def test_a_bad_run_line_is_refused_with_its_file_and_line_and_nothing_written(
    staged, fixture_data, tmp_path, line, message
):
    out, _ = staged
    q = load_table(out / "queries", ["id"])["id"][0].as_py()
    d = load_table(out / "corpus", ["id"])["id"][0].as_py()
    run = tmp_path / "run.txt"
    run.write_text(f"{q} Q0 {d} 1 1.0 t\n\n" + line.format(q=q, d=d) + "\n")  # a blank line is still a line
    with pytest.raises(InputError) as error:
        dirs = [str(out / p) for p in ("queries", "corpus", "qrels")]
        read_run(str(run), *dirs, 5, str(tmp_path / "t.parquet"), str(fixture_data["queries"]))
    assert str(error.value).startswith(message.format(run=run))
    assert not (tmp_path / "t.parquet").exists()


def assert_read_alike(path: Path) -> list[tuple]:
    """The Arrow reader's columns equal the line reader's lines, which are returned."""
    columns = _arrow_columns(str(path))
    assert columns is not None
    by_line = list(_run_lines(str(path)))
    assert columns.lines.tolist() == [n for n, *_ in by_line]
    assert columns.query_ids.to_pylist() == [q for _, q, *_ in by_line]
    assert columns.doc_ids.to_pylist() == [d for _, _, d, *_ in by_line]
    assert columns.ranks.tolist() == [r for *_, r, _ in by_line]
    assert columns.scores.tolist() == [s for *_, s in by_line]
    return by_line


@pytest.mark.parametrize("block_bytes", [1 << 24, 1 << 12])  # one block, many
def test_a_trec_run_read_as_columns_equals_it_read_line_by_line(tmp_path, monkeypatch, block_bytes):
    """The Arrow reader against the line reader on what TREC runs hold: tabs, runs of spaces, CRLF, blank and
    whitespace-only lines, Unicode whitespace too (skipped, yet counted in later line numbers), scientific
    scores, Unicode ids; a line the Arrow reader does not take (a '+3' rank) hands the whole file to the line
    reader."""
    rng = np.random.default_rng(0)
    lines = [f"q{rng.integers(50)} Q0 d{rng.integers(10**6)} {i} {rng.normal():.6g} bm25" for i in range(1, 3000)]
    lines[10] = "q1\tQ0\td-ü\t5\t1e-3\ttag"
    lines[20] = "  q2   Q0 d2  7 -4.5E2 tag  "
    lines[30:30] = ["", "   \t ", "\u3000\x0b\x1c"]  # blank: str.strip() leaves nothing
    path = tmp_path / "run.trec"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    monkeypatch.setattr(sources, "RUN_BLOCK_BYTES", block_bytes)
    assert_read_alike(path)
    path.write_text("\n".join(lines[:40] + ["q1 Q0 d1 +3 1.0 t"]) + "\n")
    assert _arrow_columns(str(path)) is None
    assert run_columns(str(path)).ranks.tolist() == [r for *_, r, _ in _run_lines(str(path))]
    path.write_text("\n".join(lines[:40] + ["q1 Q0 d1 0x10 1.0 t"]) + "\n")  # Arrow reads it as 16
    with pytest.raises(InputError, match=r"run.trec:41: not a run line"):
        run_columns(str(path))
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines[:5]).encode())  # a byte-order mark, either reader
    assert run_columns(str(path)).query_ids[0].as_py() == next(_run_lines(str(path)))[1] == lines[0].split()[0]


@pytest.mark.parametrize("block_bytes", [1 << 24, 1 << 12])  # one block, many
def test_a_jsonl_run_read_as_columns_equals_it_read_line_by_line(tmp_path, monkeypatch, block_bytes):
    """The Arrow JSONL reader against the line reader: blank lines (counted in later line numbers), CRLF,
    escapes and Unicode ids, keys in any order, extra keys, a missing or null rank (0); a line Arrow does not
    take plainly (a number for an id, which the line reader reads as its text) hands the whole file to the
    line reader, and a NaN score is still refused with its file:line."""
    rng = np.random.default_rng(1)
    rows = [
        {"query_id": f"q{rng.integers(50)}", "doc_id": f"d{rng.integers(10**6)}", "score": float(rng.normal())}
        | ({"rank": i} if i % 3 else {})
        for i in range(1, 3000)
    ]
    rows[7] = {"score": 2.5, "doc_id": 'd"\\ü\u2028', "extra": {"nested": [1]}, "query_id": "q-ü", "rank": None}
    lines = [json.dumps(r, ensure_ascii=i % 2 == 0) for i, r in enumerate(rows)]
    lines[30:30] = ["", "  \t ", "\u2003\x0c"]
    path = tmp_path / "run.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode())
    monkeypatch.setattr(sources, "RUN_BLOCK_BYTES", block_bytes)
    by_line = assert_read_alike(path)
    assert by_line[7][1:4] == ("q-ü", 'd"\\ü\u2028', 0)
    path.write_text("\n".join(lines[:40] + ['{"query_id": 7, "doc_id": "d1", "score": 1}']) + "\n")
    assert _arrow_columns(str(path)) is None
    assert run_columns(str(path)).query_ids.to_pylist()[-1] == "7"
    path.write_text("\n".join(lines[:40] + ['{"query_id": "q", "doc_id": "d1", "score": NaN}']) + "\n")
    with pytest.raises(InputError, match=r"run.jsonl:41: score is NaN"):
        run_columns(str(path))


GOOD_JSONL = '{"query_id": "q1", "doc_id": "d1", "score": 1.5}'


@pytest.mark.parametrize(
    "bad, message",
    [
        (b'\x1e{"query_id": "q", "doc_id": "d", "score": 1}', "Expecting value"),  # JSON-seq's separator
        ('{"query_id": "q", "doc_id": "d", "score": 1}\u00a0'.encode(), "Extra data"),
        (b'{"query_id": "q", "doc_id": "d",\n"score": 1}\n' + GOOD_JSONL.encode() * 2, "Expecting property"),
        (b'{"query_id": "q", "doc_id": "d\xff", "score": 1}', "codec can't encode"),  # not UTF-8
        (b'{"query_id": "q\\ud800", "doc_id": "d", "score": 1}', "surrogates not allowed"),
        (b'{"query_id": "q", "doc_id": "d", "score": 1, "rank": "3"}', "rank '3' is not an integer"),
        (b'{"query_id": "q", "doc_id": "d", "score": 1, "rank": true}', "rank True is not an integer"),
        (b'{"query_id": "q", "doc_id": "d", "score": 1, "rank": 9223372036854775808}', "beyond 64 bits"),
        (b'{"query_id": "q", "doc_id": "d", "score": 1' + b"0" * 400 + b"}", "too large"),
    ],
)
def test_a_jsonl_line_the_line_reader_refuses_is_not_taken_by_arrow(tmp_path, bad, message):
    """Whatever json.loads refuses, Arrow does not read plainly either: the whole file goes to the line
    reader, which names the line (line 3: after a good line and a blank one)."""
    path = tmp_path / "run.jsonl"
    path.write_bytes(GOOD_JSONL.encode() + b"\n\n" + bad + b"\n")
    assert _arrow_columns(str(path)) is None
    with pytest.raises(InputError, match=rf"run.jsonl:3: not a run line \(.*{re.escape(message)}"):
        run_columns(str(path))


def test_fusion_is_the_union_by_reciprocal_rank_with_exact_cosines(staged, tmp_path):
    out, paths = staged
    index_bm25(str(out / "corpus"), BM25, str(tmp_path / "index"))
    search_bm25(
        str(tmp_path / "index"), *(str(out / p) for p in ("queries", "corpus", "qrels")), BM25, 10, str(tmp_path / "b")
    )
    sources = {"dense": str(out / "candidates.parquet"), "bm25": str(tmp_path / "b")}
    dirs = [str(out / "corpus"), str(out / "queries")]
    counts = fuse_candidates(sources, paths["corpus"], paths["queries"], *dirs, str(tmp_path / "fused.parquet"))
    fused = pq.read_table(tmp_path / "fused.parquet").to_pylist()
    tables = {name: pq.read_table(path).to_pylist() for name, path in sources.items()}
    corpus, queries = ShardedEmbeddings(paths["corpus"]), ShardedEmbeddings(paths["queries"])
    by_query: dict[int, list[dict]] = {}
    for row in fused:
        by_query.setdefault(row["query_row"], []).append(row)
    ranks = {name: {(r["query_row"], r["doc_row"]): r["rank"] for r in rows} for name, rows in tables.items()}
    bm25_only = 0
    for q, rows in by_query.items():
        union = {d for name in ranks for (qq, d) in ranks[name] if qq == q}
        assert sorted(r["doc_row"] for r in rows) == sorted(union)
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        expected = []
        for d in union:
            got = [ranks[name].get((q, d)) for name in ("dense", "bm25")]
            rrf = sum(1 / (RRF_K + r) for r in got if r is not None)
            expected.append((-rrf, *(r if r is not None else 10**9 for r in got), d))
        assert [r["doc_row"] for r in rows] == [e[-1] for e in sorted(expected)]
        for r in rows:
            assert r["rank_dense"] == ranks["dense"].get((q, r["doc_row"]))
            assert r["rank_bm25"] == ranks["bm25"].get((q, r["doc_row"]))
            assert r["rrf"] == pytest.approx(-next(e[0] for e in expected if e[-1] == r["doc_row"]))
            # the cosine of every candidate, the dense search's or not, is the float64 dot product's
            direct = float(corpus.take(np.array([r["doc_row"]]))[0].astype(np.float64) @ queries.take(np.array([q]))[0])
            assert r["cosine"] == pytest.approx(direct, abs=1e-6)
            if r["rank_dense"] is None:
                bm25_only += 1
                assert r["score_dense"] is None and r["score_bm25"] > 0
            else:
                assert r["score_dense"] == r["cosine"]
    assert bm25_only == counts["computed_cosines"] > 50
    assert (
        counts["candidates"]
        == len(fused)
        == counts["from_dense"]
        + counts["from_bm25"]
        - sum(1 for r in fused if r["rank_dense"] is not None and r["rank_bm25"] is not None)
    )
