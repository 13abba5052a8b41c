"""read_pairs: every pair shape gives the same BEIR tables, ids are content hashes stable across processes,
repeated anchors merge, symmetric data never lists a query's own text, given negatives follow their policy,
and every bad line stops the reader with one line naming the file and line (or column)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

import negflow.pair_shapes as pair_shapes
from negflow.errors import InputError
from negflow.grades import GIVEN_NEGATIVE, POSITIVE, SAME_TEXT
from negflow.pair_shapes import PairSettings
from negflow.read_pairs import PairBuilder, PairTables, read_pairs
from negflow.text_ids import normalise, text_hash


@pytest.fixture(scope="module")
def docstrings():
    """Queries with their positive texts (one query with two, on two lines) and one given negative each,
    from the docstring set the workflow fixtures use."""
    from negflow.demo import build_docstring_dataset

    data = build_docstring_dataset(max_docs=120, query_every=4)
    text = {d["_id"]: d["text"] for d in data["corpus"]}
    queries = {q["_id"]: q["text"] for q in data["queries"]}
    rows = [(queries[q], text[d], d) for q, d, _ in data["qrels"]]
    extra = data["corpus"][-1]
    rows.append((rows[0][0], extra["text"], extra["_id"]))  # a repeated anchor with a second positive
    used = {d for _, _, d in rows}
    spare = [d for d in data["corpus"] if d["_id"] not in used]
    negatives = [(spare[i % len(spare)]["text"], spare[i % len(spare)]["_id"]) for i in range(len(rows))]
    return {"rows": rows, "negatives": negatives, "corpus": data["corpus"]}


def out_tables(folder: Path) -> PairTables:
    names = ("corpus", "queries", "qrels", "query_lines", "doc_hashes")
    return PairTables(*(str(folder / f"{n}.parquet") for n in names), manifest=str(folder / "manifest.json"))


def run(tmp_path, name, pairs, corpus=None, **settings):
    out = out_tables(tmp_path / name)
    result = read_pairs(str(pairs), None if corpus is None else str(corpus), PairSettings(**settings), out)
    return out, result


def by_text(out: PairTables) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Corpus texts in order, and each query's judged documents (text, grade) in qrels order."""
    corpus = pq.read_table(out.corpus)
    queries = pq.read_table(out.queries)
    doc_text = dict(zip(corpus["_id"].to_pylist(), corpus["text"].to_pylist(), strict=True))
    query_text = dict(zip(queries["_id"].to_pylist(), queries["text"].to_pylist(), strict=True))
    judged: dict[str, list] = {}
    for row in pq.read_table(out.qrels).to_pylist():
        judged.setdefault(query_text[row["query-id"]], []).append((doc_text[row["corpus-id"]], row["score"]))
    return corpus["text"].to_pylist(), judged


def write_jsonl(path: Path, objs, gz=False) -> Path:
    data = "".join(json.dumps(o) + "\n" for o in objs).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_shapes(folder: Path, rows, negatives) -> dict[str, Path]:
    """The same pairs, with the same given negatives where the shape has them, in every shape."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = {
        "pair": [[q, p] for q, p, _ in rows],
        "triplet": [[q, p, n] for (q, p, _), (n, _) in zip(rows, negatives, strict=True)],
        "set": [{"set": [q, p]} for q, p, _ in rows],
        "query_pos": [
            {"query": q, "pos": [p], "neg": n, "other": 1} for (q, p, _), (n, _) in zip(rows, negatives, strict=True)
        ],
        "anchor_positive": [
            {"anchor": q, "positive": p, "negative": n} for (q, p, _), (n, _) in zip(rows, negatives, strict=True)
        ],
        "tevatron": [
            {
                "query_id": text_hash(normalise(q)),
                "query": q,
                "positive_passages": [{"docid": d, "title": "", "text": p}],
                "negative_passages": [{"docid": nd, "title": "", "text": n}],
            }
            for (q, p, d), (n, nd) in zip(rows, negatives, strict=True)
        ],
    }
    paths = {name: write_jsonl(folder / f"{name}.jsonl.gz", objs, gz=True) for name, objs in shapes.items()}
    table = pa.table(
        {
            "anchor": [q for q, _, _ in rows],
            "positive": [p for _, p, _ in rows],
            "negative": [n for n, _ in negatives],
        }
    )
    pq.write_table(table, folder / "pairs.parquet")
    paths["parquet"] = folder / "pairs.parquet"
    hub = folder / "hub-copy" / "data"
    hub.mkdir(parents=True)
    pq.write_table(table.rename_columns(["question", "answer", "wrong"]), hub / "train-00000-of-00001.parquet")
    paths["hub folder"] = Path(f"{hub.parent}:train")
    return paths


def test_every_shape_gives_the_same_tables(tmp_path, docstrings):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docstrings["corpus"])
    paths = write_shapes(tmp_path / "shapes", docstrings["rows"], docstrings["negatives"])
    reference_out, reference = run(tmp_path, "ref", paths["pair"], corpus)
    want = {n: Path(getattr(reference_out, n)).read_bytes() for n in ("corpus", "queries", "qrels")}
    texts, judged = by_text(reference_out)
    assert texts == [d["text"] for d in docstrings["corpus"]]  # every text was in the corpus: its order and ids
    assert reference["counts"]["queries"] == len(docstrings["rows"]) - 1  # the repeated anchor merged
    for name, path in paths.items():
        extra = {"negative_column": "wrong"} if name == "hub folder" else {}
        out, result = run(tmp_path, name, path, corpus, **extra)
        assert by_text(out) == (texts, judged), name
        if name != "tevatron":  # Tevatron carries the corpus' own docids here, and hashed query ids
            assert {n: Path(getattr(out, n)).read_bytes() for n in ("corpus", "queries", "qrels")} == want, name
        assert result["counts"]["positives"] == len(docstrings["rows"])


@pytest.mark.slow  # a child process
def test_ids_are_content_hashes_stable_across_processes(tmp_path, docstrings):
    pairs = write_jsonl(tmp_path / "p.jsonl", [[q, p] for q, p, _ in docstrings["rows"]])
    out, _ = run(tmp_path, "a", pairs)
    query = docstrings["rows"][0][0]
    ids = pq.read_table(out.queries)["_id"].to_pylist()
    assert ids[0] == text_hash(query) and len(ids[0]) == 32
    script = (
        "import sys; sys.path.insert(0, 'scripts'); from negflow.read_pairs import *; "
        f"read_pairs({str(pairs)!r}, None, PairSettings(), PairTables(*[{str(tmp_path / 'b')!r} + '/' + n for n in "
        "('corpus.parquet', 'queries.parquet', 'qrels.parquet', 'lines.parquet', 'hashes.parquet', 'm.json')]))"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, env={"PYTHONHASHSEED": "123"})
    for name in ("corpus", "queries", "qrels"):
        assert pq.read_table(tmp_path / "b" / f"{name}.parquet").equals(pq.read_table(getattr(out, name)))


def test_texts_equal_after_nfc_and_trimming_are_one(tmp_path):
    composed = "caf\u00e9 menu"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    pairs = write_jsonl(tmp_path / "p.jsonl", [[composed, "a positive"], [f"  {decomposed}\n", "another positive"]])
    out, result = run(tmp_path, "a", pairs)
    queries = pq.read_table(out.queries).to_pylist()
    assert queries == [{"_id": text_hash(composed), "text": composed}]
    assert result["counts"]["repeated_anchors_merged"] == 1
    lines = pq.read_table(out.query_lines).to_pylist()
    assert lines[0]["lines"] == [1, 2] and lines[0]["source"] == str(pairs)


def test_repeated_anchors_are_one_query_with_every_positive(tmp_path):
    pairs = write_jsonl(
        tmp_path / "p.jsonl",
        [["q one", "p1"], ["q two", "p2"], ["q one", "p3"], ["q one", "p1"], {"not": "seen"}][:4],
    )
    out, result = run(tmp_path, "a", pairs)
    _, judged = by_text(out)
    assert judged == {"q one": [("p1", POSITIVE), ("p3", POSITIVE)], "q two": [("p2", POSITIVE)]}
    assert result["counts"]["repeated_anchors_merged"] == 2
    lines = {r["query_id"]: r["lines"] for r in pq.read_table(out.query_lines).to_pylist()}
    assert lines == {text_hash("q one"): [1, 3, 4], text_hash("q two"): [2]}
    hashes = pq.read_table(out.doc_hashes).to_pylist()
    assert [(h["doc_id"], h["first_line"]) for h in hashes] == [
        (text_hash(p), n) for p, n in (("p1", 1), ("p2", 2))
    ] + [(text_hash("p3"), 3)]


def test_symmetric_sets_exclude_each_querys_own_text(tmp_path):
    sets = [{"set": ["how do I sort a list", "sorting a list in python", "python list sort"]}]
    sets.append({"set": ["what is a tuple", "tuples explained"]})
    pairs = write_jsonl(tmp_path / "sets.jsonl", sets)
    out, result = run(tmp_path, "all", pairs, set_mode="all")
    texts, judged = by_text(out)
    assert len(judged) == 5 and set(texts) == {t for s in sets for t in s["set"]}
    for query, docs in judged.items():
        assert (query, SAME_TEXT) in docs  # excluded from its candidates, never a positive
        assert {d for d, g in docs if g == POSITIVE} == {t for s in sets if query in s["set"] for t in s["set"]} - {
            query
        }
    assert result["counts"]["own_text_excluded"] == 5
    out, _ = run(tmp_path, "first", pairs)  # the default: the first member asks, the others answer
    texts, judged = by_text(out)
    assert judged == {
        "how do I sort a list": [("sorting a list in python", 1), ("python list sort", 1)],
        "what is a tuple": [("tuples explained", 1)],
    }
    assert texts == ["sorting a list in python", "python list sort", "tuples explained"]


def test_given_negatives_pool_keep_or_drop(tmp_path):
    pairs = write_jsonl(
        tmp_path / "t.jsonl",
        [{"query": "q1", "pos": ["p1"], "neg": ["n1", "p2"]}, {"query": "q2", "pos": "p2", "neg": []}],
    )
    out, result = run(tmp_path, "pool", pairs)
    texts, judged = by_text(out)
    assert texts == ["p1", "n1", "p2"] and judged == {"q1": [("p1", POSITIVE)], "q2": [("p2", POSITIVE)]}
    out, result = run(tmp_path, "keep", pairs, given_negatives="keep")
    texts, judged = by_text(out)
    assert judged == {"q1": [("p1", POSITIVE), ("n1", GIVEN_NEGATIVE), ("p2", GIVEN_NEGATIVE)], "q2": [("p2", 1)]}
    assert result["counts"]["given_negatives_kept"] == 2
    out, result = run(tmp_path, "drop", pairs, given_negatives="drop")
    texts, judged = by_text(out)
    assert texts == ["p1", "p2"] and judged == {"q1": [("p1", POSITIVE)], "q2": [("p2", POSITIVE)]}
    assert result["counts"]["given_negatives_read"] == 2
    # a text given as a negative of a query and as its positive on another line stays a positive
    conflict = write_jsonl(
        tmp_path / "c.jsonl", [{"query": "q1", "pos": "p1", "neg": "n1"}, {"query": "q1", "pos": "n1"}]
    )
    out, result = run(tmp_path, "conflict", conflict, given_negatives="keep")
    assert by_text(out)[1] == {"q1": [("p1", POSITIVE), ("n1", POSITIVE)]}
    assert result["counts"]["given_negatives_also_positive"] == 1


def test_corpus_adds_documents_and_never_loses_a_positive(tmp_path):
    corpus = write_jsonl(
        tmp_path / "pool.jsonl", [{"text": "pool doc"}, {"text": "p1"}, {"text": "  "}, {"text": "pool doc"}]
    )
    pairs = write_jsonl(tmp_path / "p.jsonl", [["q1", "p1"], ["q2", "p2"]])
    out, result = run(tmp_path, "a", pairs, corpus)
    texts, judged = by_text(out)
    assert texts == ["pool doc", "p1", "p2"]  # the corpus first, in its order; the pair file's new texts after
    assert judged == {"q1": [("p1", POSITIVE)], "q2": [("p2", POSITIVE)]}
    assert (result["counts"]["corpus_read"], result["counts"]["corpus_empty"]) == (4, 1)
    beir = write_jsonl(tmp_path / "beir.jsonl", [{"_id": "D1", "title": "T", "text": "body"}])
    out, _ = run(tmp_path, "b", write_jsonl(tmp_path / "q.jsonl", [["q", "T body"]]), beir)
    assert pq.read_table(out.corpus).to_pylist() == [{"_id": "D1", "text": "T body"}]
    assert pq.read_table(out.qrels)["corpus-id"].to_pylist() == ["D1"]


def test_max_pairs_is_a_seeded_sample_and_says_so(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", [[f"query {i}", f"positive {i}"] for i in range(50)])
    out, result = run(tmp_path, "a", pairs, max_pairs=10, seed=1)
    again, _ = run(tmp_path, "b", pairs, max_pairs=10, seed=1)
    other, _ = run(tmp_path, "c", pairs, max_pairs=10, seed=2)
    picked = pq.read_table(out.queries)["text"].to_pylist()
    assert len(picked) == 10 and picked == pq.read_table(again.queries)["text"].to_pylist()
    assert picked != pq.read_table(other.queries)["text"].to_pylist()
    manifest = json.loads(Path(out.manifest).read_text())
    assert manifest["sample"] == {"records": 50, "kept": 10, "seed": 1}
    assert manifest["settings"]["max_pairs"] == 10 and manifest["inputs"]["pairs"]["path"] == str(pairs)


def test_empty_anchors_and_positives_are_skipped_counted_and_warned(tmp_path, caplog):
    pairs = write_jsonl(tmp_path / "p.jsonl", [["", "p"], ["q", " "], ["q", "p"], ["q", "q"]])
    with caplog.at_level("WARNING", logger="negflow"):
        _, result = run(tmp_path, "a", pairs)
    c = result["counts"]
    assert (c["empty_anchors"], c["empty_positives"], c["positives_equal_to_anchor"], c["queries"]) == (1, 1, 1, 1)
    assert "skipped: 1 empty anchors, 1 empty positives, 1 positives equal to anchor" in caplog.text
    nothing = write_jsonl(tmp_path / "n.jsonl", [["", "p"], ["q", ""]])
    with pytest.raises(InputError, match=r"n\.jsonl: no line has both an anchor and a positive; nothing to mine"):
        run(tmp_path, "b", nothing)
    assert not any((tmp_path / "b").glob("*.parquet"))
    table = pa.table({"question": ["q1", None, "q3"], "exp": ["e1", "e2", None]})
    pq.write_table(table, tmp_path / "t.parquet")
    out, result = run(tmp_path, "b", tmp_path / "t.parquet", anchor_column="question", positive_column="exp")
    assert by_text(out)[1] == {"q1": [("e1", POSITIVE)]}
    assert (result["counts"]["empty_anchors"], result["counts"]["empty_positives"]) == (1, 1)


BAD_LINES = [
    ("no shape", [["q", "p"], {"question": "q", "answer": "a"}], ":2: matches no pair shape (dict with keys"),
    ("one item", [["q"]], ":1: a list of 1 item; expected [anchor, positive] or [anchor, positive, negative]"),
    ("four items", [["q", "p"], ["q", "p", "n", "x"]], ":2: a list of 4 items"),
    ("non-string member", [["q", "p"], ["q", 5]], ":2: item 2 of the list must be a string, got int"),
    ("null member", [["q", None]], ":1: item 2 of the list must be a string, got null"),
    ("mixed shapes", [["q", "p"], ["q", "p"], ["q", "p", "n"]], ':3: a line of shape ["anchor", "positive", '),
    ("pos not strings", [{"query": "q", "pos": [1]}], ":1: 'pos'[0] must be a string, got int"),
    ("set not a list", [{"set": "abc"}], ":1: 'set' must be a list of strings, got str"),
    ("passage not an object", [{"query": "q", "positive_passages": ["p"]}], ":1: positive_passages[0] must be an"),
]


@pytest.mark.parametrize("block_bytes", [1 << 21, 1], ids=["one block", "a line a block"])
@pytest.mark.parametrize("lines, message", [c[1:] for c in BAD_LINES], ids=[c[0] for c in BAD_LINES])
def test_bad_lines_are_one_line_naming_file_and_line(tmp_path, lines, message, block_bytes, monkeypatch):
    """Whether a bad line is in the file's first block (read line by line) or a later one (read as columns
    until a line does not fit), the error names it."""

    monkeypatch.setattr(pair_shapes, "BLOCK_BYTES", block_bytes)
    pairs = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(InputError) as err:
        run(tmp_path, "out", pairs)
    assert str(err.value).startswith(str(pairs)) and message in str(err.value) and "\n" not in str(err.value)
    assert not any((tmp_path / "out").glob("*.parquet"))


def test_malformed_json_and_bad_bytes_name_their_line(tmp_path, monkeypatch):

    monkeypatch.setattr(pair_shapes, "BLOCK_BYTES", 1)  # one line a block: the bad one after the first
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'["q", "p"]\n["q", "p"\n')
    with pytest.raises(InputError, match=r"p\.jsonl:2: malformed JSON"):
        run(tmp_path, "a", path)
    path.write_bytes(b'["q", "p"]\n["q", "\xff"]\n')
    with pytest.raises(InputError, match=r"p\.jsonl:2: not valid UTF-8 \(invalid start byte at byte 7\)"):
        run(tmp_path, "b", path)


def test_a_docid_naming_two_texts_is_refused(tmp_path):
    passage = {"docid": "D1", "title": "", "text": "first text"}
    lines = [
        {"query_id": "1", "query": "q1", "positive_passages": [passage]},
        {"query_id": "2", "query": "q2", "positive_passages": [{**passage, "text": "other text"}]},
    ]
    pairs = write_jsonl(tmp_path / "tev.jsonl", lines)
    with pytest.raises(InputError, match=rf"document id 'D1' names 2 different texts \({pairs}:1, {pairs}:2\)"):
        run(tmp_path, "a", pairs)


def test_missing_or_mistyped_columns_name_the_column(tmp_path):
    pq.write_table(pa.table({"question": ["q"], "exp": ["e"], "n": [3]}), tmp_path / "t.parquet")
    path = tmp_path / "t.parquet"
    with pytest.raises(InputError, match=r"t\.parquet: no column 'answer' \(positive_column\); columns:"):
        run(tmp_path, "a", path, positive_column="answer")
    with pytest.raises(InputError, match=r"t\.parquet: column 'n' \(negative\) holds int64, expected strings or"):
        run(tmp_path, "b", path, negative_column="n")


def test_tables_do_not_depend_on_the_chunk_size(tmp_path, docstrings, monkeypatch):
    """Texts are numbered a chunk at a time through sorted key runs that merge as they grow: many tiny
    chunks (and a corpus read first) must write what one chunk writes."""
    import negflow.read_pairs as read_pairs_module

    corpus = write_jsonl(tmp_path / "corpus.jsonl", docstrings["corpus"][::2])
    pairs = write_jsonl(
        tmp_path / "p.jsonl",
        [[q, p, n] for (q, p, _), (n, _) in zip(docstrings["rows"], docstrings["negatives"], strict=True)],
    )
    whole, _ = run(tmp_path, "whole", pairs, corpus, given_negatives="keep")
    monkeypatch.setattr(read_pairs_module, "CHUNK_TEXTS", 7)
    chunked, _ = run(tmp_path, "chunked", pairs, corpus, given_negatives="keep")
    for name in ("corpus", "queries", "qrels", "query_lines", "doc_hashes"):
        assert pq.read_table(getattr(chunked, name)).equals(pq.read_table(getattr(whole, name))), name


FREED_MEMORY_ROUNDS = """
import ctypes, resource, sys
libc = ctypes.CDLL(None)
assert libc.prctl(41, 1, 0, 0, 0) == 0  # PR_SET_THP_DISABLE: a huge page is one fault for 512 pages
sys.path.insert(0, "scripts")
from negflow.read_pairs import retain_freed_memory
if sys.argv[1] == "retain":
    retain_freed_memory()
def faults():  # page faults while buffers of 24 MB and of 1 MB (64 MB in all) are filled and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [b"x" * (24 << 20) for _ in range(2)] + [b"x" * (1 << 20) for _ in range(16)]
    buffers.clear()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(*[faults() for _ in range(3)])
"""


@pytest.mark.slow  # child processes
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_chunk_buffers_are_reused_without_page_faults():
    """glibc by default hands freed buffers back to the system, so the next chunk's buffers fault in fresh
    pages; once retain_freed_memory has run, later rounds reuse the same pages, up to 32 MB a buffer. The
    child runs with glibc's defaults whatever the caller's environment (no MALLOC_* or GLIBC_TUNABLES
    settings, no preloaded allocator) and without transparent huge pages, which change the counts.
    Catches, unlike the test before it: an mmap threshold of 2 MB instead of 32 MB (24 MB buffers would
    fault in afresh every chunk), and a child that fails or prints nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD"))}

    def rounds(mode: str) -> list[int]:
        done = subprocess.run(
            [sys.executable, "-c", FREED_MEMORY_ROUNDS, mode], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        counts = [int(n) for n in done.stdout.split()]
        assert len(counts) == 3, done.stdout
        return counts

    pages = 64 * (1 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert all(n > pages // 2 for n in rounds("default"))
    first, *later = rounds("retain")
    assert first > pages // 2 and all(n < pages // 20 for n in later)


def test_blocks_read_as_columns_write_what_line_by_line_reading_writes(tmp_path, monkeypatch):
    """Pair and triplet lines after a file's first block, and table batches, go to the builder as columns;
    a block with a line that needs counting (empty, equal to its anchor, null) is read line by line. Tiny
    blocks must write exactly what one line-by-line pass writes, whatever the policy and sample."""
    import negflow.read_pairs as read_pairs_module

    cafe, cafe_nfd = "caf\u00e9 au lait", unicodedata.normalize("NFD", "caf\u00e9 au lait")
    triplets = [[f"query {i % 23}", f" positive {i % 31} ", f"negative {i % 17}"] for i in range(120)]
    triplets[40] = [cafe_nfd, "  the " + cafe + " doc", "negative 3"]
    triplets[41] = [cafe, "another doc", "the " + cafe_nfd + " doc"]
    triplets[60] = ["query 60", "", "negative 1"]  # an empty positive: its block is read line by line
    triplets[61] = ["query 61", "query 61", "negative 2"]
    triplets[80] = ["query 80", "positive 80", " query 80"]
    files = {
        "pair": write_jsonl(tmp_path / "p.jsonl.gz", [t[:2] for t in triplets], gz=True),
        "triplet": write_jsonl(tmp_path / "t.jsonl", triplets),
    }
    nulls = [[None if i == 70 else a, p, None if i == 90 else n] for i, (a, p, n) in enumerate(triplets)]
    files["table"] = tmp_path / "t.parquet"
    pq.write_table(
        pa.table([list(column) for column in zip(*nulls, strict=True)], ["anchor", "positive", "negative"]),
        files["table"],
    )
    cases = [("pair", {}), ("pair", {"max_pairs": 50}), ("table", {"given_negatives": "keep"})]
    cases += [("triplet", {"given_negatives": policy}) for policy in ("pool", "keep", "drop")]
    results = {}
    for name, settings in cases:
        monkeypatch.setattr(pair_shapes, "BLOCK_BYTES", 1 << 30)
        monkeypatch.setattr(pair_shapes, "CHUNK_RECORDS", 1 << 20)
        monkeypatch.setattr(read_pairs_module, "PairBuilder", LineByLine)
        label = f"{name} {settings}"
        whole, counts = run(tmp_path, f"whole {label}", files[name], **settings)
        monkeypatch.setattr(pair_shapes, "BLOCK_BYTES", 64)  # two or three lines a block
        monkeypatch.setattr(pair_shapes, "CHUNK_RECORDS", 9)
        monkeypatch.setattr(read_pairs_module, "PairBuilder", CountingBlocks)
        CountingBlocks.blocks = 0
        blocks, block_counts = run(tmp_path, f"blocks {label}", files[name], **settings)
        assert CountingBlocks.blocks > 5, label  # most of the file went as columns
        assert block_counts == counts, label
        results[label] = counts["counts"]
        for table in ("corpus", "queries", "qrels", "query_lines", "doc_hashes"):
            assert pq.read_table(getattr(blocks, table)).equals(pq.read_table(getattr(whole, table))), (label, table)
    kept = results["triplet {'given_negatives': 'keep'}"]
    assert kept["given_negatives_kept"] > 100
    assert (kept["negatives_equal_to_anchor"], kept["empty_positives"], kept["positives_equal_to_anchor"]) == (1, 1, 1)
    assert results["pair {'max_pairs': 50}"]["records"] == 50


def test_the_cycle_collector_is_paused_while_reading_and_restored(tmp_path, monkeypatch):
    import gc

    seen = []
    flush = PairBuilder.flush
    monkeypatch.setattr(PairBuilder, "flush", lambda self: (seen.append(gc.isenabled()), flush(self))[1])
    run(tmp_path, "a", write_jsonl(tmp_path / "p.jsonl", [["q", "p"]]))
    with pytest.raises(InputError):
        run(tmp_path, "b", write_jsonl(tmp_path / "bad.jsonl", [["q", "p"], ["q"]]))
    assert seen and not any(seen) and gc.isenabled()


ONE_CALL_BLOCKS = {
    "lists": b'["a", "b"]\n["c", "d"]\n["a", "e"]\n',
    "blank line": b'["a", "b"]\n\n["c", "d"]\n',
    "CRLF": b'["a", "b"]\r\n["c", "d"]\r\n',
    "leading space": b'["a", "b"]\n ["c", "d"]\n',
    # two values on line 3 and one over lines 4-5: as many values as lines, which the parse must not accept
    "values across lines": b'["a", "b"]\n["a", "b"], ["c", "d"]\n[["e", "f"]\n["g", "h"]]\n',
    "two lines one value": b'["a", "b"]\n["c",\n"d"]\n',
}


@pytest.mark.parametrize("block", ONE_CALL_BLOCKS.values(), ids=ONE_CALL_BLOCKS.keys())
def test_a_block_parsed_in_one_call_reads_as_its_lines_do(tmp_path, block, monkeypatch):
    """After the first block, a block whose lines all look like lists is parsed as one JSON array; whatever it
    holds, the tables (or the error naming a line) are those of reading it line by line."""
    import negflow.read_pairs as read_pairs_module

    first = b'["q",' + b" " * 1000 + b'"p"]\n'
    monkeypatch.setattr(pair_shapes, "BLOCK_BYTES", len(first))  # block 1: the first line; block 2: the rest
    path = tmp_path / "p.jsonl"
    path.write_bytes(first + block)
    outcomes = []
    CountingBlocks.blocks = 0
    for builder in (CountingBlocks, LineByLine):
        monkeypatch.setattr(read_pairs_module, "PairBuilder", builder)
        try:
            out, result = run(tmp_path, builder.__name__, path)
            tables = [pq.read_table(getattr(out, name)) for name in ("corpus", "queries", "qrels", "query_lines")]
            outcomes.append((result, tables))
        except InputError as e:
            outcomes.append(str(e))
    assert outcomes[0] == outcomes[1]
    if isinstance(outcomes[0], str):
        assert outcomes[0].startswith(f"{path}:3: malformed JSON")
    assert CountingBlocks.blocks == (block == ONE_CALL_BLOCKS["lists"])


class LineByLine(PairBuilder):
    def add_pair_block(self, *args) -> bool:
        return False


class CountingBlocks(PairBuilder):
    blocks = 0

    def add_pair_block(self, *args) -> bool:
        added = super().add_pair_block(*args)
        type(self).blocks += added
        return added
