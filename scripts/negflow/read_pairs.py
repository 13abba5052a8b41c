"""Stage 0 for pair data (rule read_pairs): read (query, positive[, negative]) files in the shapes people hold
and write them as the BEIR tables `prepare` reads (corpus, queries, qrels), plus an id map back to the source
lines.

What the tools negflow replaces get wrong here (../shared/notes/pairs.md), and what this does instead:
- repeated anchors become one query with the union of their positives, so one line's positive is never
  mined as another line's false negative;
- identical texts (after Unicode NFC and trimming) become one query or one document, with an id that is a
  content hash, the same on every machine and run (ids the data carries are kept);
- a query whose own text is in the corpus gets that document as an excluded qrels row: symmetric data
  (duplicate questions, sentence pairs) never returns the query itself;
- every positive joins the corpus, whatever `corpus` adds; no silent cap on lines; a sample is seeded.

The reader streams: texts go to an Arrow file on disk the first time they are seen; memory holds numpy
arrays (a 128-bit key, a sorted index and the first line per distinct text, two row numbers per relation),
so it grows with the distinct texts, never with Python objects per line. What a line may hold and how a
file is parsed is `pair_shapes`; how a text gets its id is `text_ids`; this module builds and writes the tables.
"""

from __future__ import annotations

import ctypes
import gc
import io
import logging
from array import array
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import chain
from operator import itemgetter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from negflow.errors import InputError
from negflow.files import atomic_output, write_json
from negflow.grades import GIVEN_NEGATIVE, POSITIVE, SAME_TEXT
from negflow.pair_shapes import (
    SHAPES,
    Example,
    PairSettings,
    corpus_documents,
    count_records,
    is_jsonl,
    read_jsonl,
    read_table,
    sample_mask,
)
from negflow.refs import split_ref
from negflow.text_ids import TextIndex, normalise, normalise_all

log = logging.getLogger("negflow")

CHUNK_TEXTS = 500_000  # text occurrences numbered at once (the chunk's Python strings are what it holds)
# Texts and hash ids are nearly all distinct: dictionary pages and min/max statistics only cost time, and
# compressing them (read once, by prepare) would double this stage's time for a smaller intermediate file.
PARQUET_OPTIONS = {"use_dictionary": False, "write_statistics": False, "compression": "none"}
# Counts of what was skipped, each worth a warning.
SKIP_COUNTS = (
    "empty_sets",
    "empty_anchors",
    "empty_positives",
    "positives_equal_to_anchor",
    "examples_without_positive",
    "empty_negatives",
    "negatives_equal_to_anchor",
    "given_negatives_also_positive",
    "corpus_empty",
)

# Roles of a (query, document) relation while reading; only POS and NEG become qrels rows.
_POS, _NEG, _DOC = 1, 0, 2
_SOURCE_PAIRS, _SOURCE_CORPUS = 0, 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def retain_freed_memory() -> None:
    """Have glibc keep freed memory for reuse rather than hand it back to the system. The reader frees a
    chunk's buffers (tens to hundreds of MB) and allocates the next chunk's: with glibc's defaults every reuse
    faults in fresh pages the kernel must zero (12% of a 10M-line profile). Allocations up to 32 MB then come
    from the heap, which is never trimmed; peak RSS stays what the chunks need. A no-op where the C library
    is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's ceiling for this setting


@contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Reading builds no reference cycles, yet every parsed line is a new list the cycle collector would walk
    again and again (about 3% of a 10M-line profile): pause it while reading."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _id_key(carried_id: str) -> int:
    """A carried id as a nonzero 64-bit key (0 stands for none), to compare ids without keeping them."""
    return xxhash.xxh3_64_intdigest(carried_id.encode()) | 1


class RoleTable:
    """The texts of one role (queries or documents) written to their Parquet table the first time a text
    appears in that role, with its id: the id its first appearance carried, else its content hash."""

    SCHEMA = pa.schema([("_id", pa.string()), ("text", pa.large_string())])

    def __init__(self, path: Path, index: TextIndex, what: str):
        self.index = index
        self.what = what
        self.writer = pq.ParquetWriter(str(path), self.SCHEMA, **PARQUET_OPTIONS)
        # Writing gigabytes waits on the disk: a thread writes (without the GIL) while reading goes on; at
        # most two chunks wait, which bounds memory.
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: deque = deque()
        self.written = np.zeros(0, dtype=bool)  # by text number
        self.rows: list[np.ndarray] = []  # text numbers in table order
        self.sources: list[np.ndarray] = []
        self.lines: list[np.ndarray] = []
        self.carried: list[tuple[np.ndarray, pa.Array]] = []  # (text numbers, ids) of rows with a carried id
        # ids carried by later appearances of a text that differ from its first one: (text number, id),
        # merged into its row; id_key holds each written text's first carried id as XXH3-64 (0: none), so
        # that a later appearance carrying the same id costs no memory
        self.later_ids: list[tuple[int, str]] = []
        self.id_key = np.zeros(0, dtype=np.uint64)

    def add(self, numbers: np.ndarray, occurrences: np.ndarray, texts, lines, source: int, carried: dict):
        """Write the texts among `numbers` (the role's occurrences in a chunk, in order) not written yet."""
        if len(self.written) < self.index.size:
            grow = self.index.size - len(self.written)
            self.written = np.r_[self.written, np.zeros(grow, dtype=bool)]
            self.id_key = np.r_[self.id_key, np.zeros(grow, dtype=np.uint64)]
        unique, first = np.unique(numbers, return_index=True)
        first = np.sort(first[~self.written[unique]])  # each new text at its first appearance, in order
        named = [carried.get(o) for o in occurrences[first].tolist()] if carried else []  # their carried ids
        if carried:
            for number, given_id in zip(numbers[first].tolist(), named, strict=True):
                if given_id is not None:
                    self.id_key[number] = _id_key(given_id)
            later = np.ones(len(numbers), dtype=bool)
            later[first] = False
            at = np.flatnonzero(later)
            at = at[np.isin(occurrences[at], np.fromiter(carried, np.int64, len(carried)))]
            for i in at.tolist():  # an id on a text named already: merged unless it is that same id
                given_id = carried[int(occurrences[i])]
                if _id_key(given_id) != self.id_key[numbers[i]]:
                    self.later_ids.append((int(numbers[i]), given_id))
        if not len(first):
            return
        numbers, occurrences = numbers[first], occurrences[first]
        self.written[numbers] = True
        chosen = [texts[occurrences[0]]] if len(occurrences) == 1 else itemgetter(*occurrences.tolist())(texts)
        data = io.BytesIO()  # filled a text at a time: no bytes object per text held at once
        data.writelines(map(str.encode, chosen))
        offsets = np.zeros(len(chosen) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, chosen), dtype=np.int64, count=len(chosen)), out=offsets[1:])
        if offsets[-1] != data.tell():  # some text is not ASCII: its UTF-8 is longer than its characters
            np.cumsum(np.fromiter(map(len, map(str.encode, chosen)), np.int64, len(chosen)), out=offsets[1:])
        written = pa.LargeStringArray.from_buffers(len(chosen), pa.py_buffer(offsets), pa.py_buffer(data.getbuffer()))
        ids = self.index.hex_ids(numbers)  # the texts are valid UTF-8 already: no per-text conversion above
        if any(n is not None for n in named):
            given = pa.array(named, pa.string())
            ids = pc.coalesce(given, ids)
            has = np.asarray(given.is_valid())
            self.carried.append((numbers[has], given.filter(pa.array(has))))
        self._pending.append(self._pool.submit(self.writer.write_table, pa.table([ids, written], schema=self.SCHEMA)))
        while len(self._pending) > 2:
            self._pending.popleft().result()
        self.rows.append(numbers)
        self.sources.append(np.full(len(numbers), source, dtype=np.int8))
        self.lines.append(lines[occurrences])

    def close(self, source_paths: dict[int, str]) -> None:
        """Finish the table; refuse an id the data carried for two different texts."""
        while self._pending:
            self._pending.popleft().result()
        self._pool.shutdown()
        self.writer.close()
        self.rows = [np.concatenate(self.rows) if self.rows else np.empty(0, np.int64)]
        self.sources = [np.concatenate(self.sources) if self.sources else np.empty(0, np.int8)]
        self.lines = [np.concatenate(self.lines) if self.lines else np.empty(0, np.int64)]
        self.row_of = np.full(self.index.size, -1, dtype=np.int64)
        self.row_of[self.rows[0]] = np.arange(len(self.rows[0]))
        self.position = self.ids = None
        if not self.carried:
            return
        numbers = np.concatenate([c[0] for c in self.carried])
        self.ids = pa.concat_arrays([c[1] for c in self.carried])
        counts = pc.value_counts(self.ids)
        repeated = counts.filter(pc.greater(counts.field("counts"), 1))
        if len(repeated):
            bad = repeated.field("values")[0].as_py()
            named = numbers[np.asarray(pc.equal(self.ids, bad).to_numpy(zero_copy_only=False))][:2]
            where = ", ".join(self.source_line(int(n), source_paths) for n in named)
            raise InputError(
                f"{self.what} id {bad!r} names {repeated.field('counts')[0].as_py()} different texts ({where})"
            )
        self.position = np.full(self.index.size, -1, dtype=np.int64)
        self.position[numbers] = np.arange(len(numbers))

    def merged_ids(self) -> dict[int, list[str]]:
        """By text number, the ids later appearances carried for a text named otherwise (its first id or its
        content hash): the ids merged into one row because their texts are the same."""
        if not self.later_ids:
            return {}
        numbers = np.array([n for n, _ in self.later_ids], dtype=np.int64)
        final = self.ids_of(numbers).to_pylist()
        merged: dict[int, list[str]] = {}
        for (number, carried), kept in zip(self.later_ids, final, strict=True):
            if carried != kept and carried not in merged.setdefault(number, []):
                merged[number].append(carried)
        merged = {n: ids for n, ids in merged.items() if ids}
        if self.ids is not None and merged:  # an id that first named another text names two texts
            named = pa.array([i for ids in merged.values() for i in ids], pa.string())
            clash = pc.is_in(named, value_set=self.ids)
            if pc.any(clash).as_py():
                bad = named.filter(clash)[0].as_py()
                raise InputError(f"{self.what} id {bad!r} names 2 different texts")
        return merged

    def source_line(self, number: int, source_paths: dict[int, str]) -> str:
        row = self.row_of[number]
        return f"{source_paths[int(self.sources[0][row])]}:{int(self.lines[0][row])}"

    def ids_of(self, numbers: np.ndarray, hashes: pa.Array | None = None) -> pa.Array:
        """The ids of texts `numbers` in this role (`hashes`: their content hashes, when already built)."""
        hashes = self.index.hex_ids(numbers) if hashes is None else hashes
        if self.ids is None:
            return hashes
        position = self.position[numbers]
        return pc.coalesce(self.ids.take(pa.array(position, mask=position < 0)), hashes)


class PairBuilder:
    """Collects examples in chunks: normalises and numbers the texts, writes each new query and document to
    its table, and records query-document relations (positive, given negative, corpus document) and the
    lines every query came from. One source per chunk: the corpus is read before the pair file."""

    def __init__(self, index: TextIndex, queries: RoleTable, docs: RoleTable, given_negatives: str, counts: Counter):
        self.index = index
        self.tables = {"query": queries, "doc": docs}
        self.given = given_negatives
        self.counts = counts
        self.source = _SOURCE_PAIRS
        self.rel_query: list[np.ndarray] = []
        self.rel_doc: list[np.ndarray] = []
        self.rel_role: list[np.ndarray] = []
        self.query_lines: list[np.ndarray] = []  # (query number, line) per example
        self._reset()

    def _reset(self) -> None:
        self.texts: list[str] = []  # every text occurrence of the chunk, normalised
        self.lines = array("q")
        # relations, by occurrence: the query's (-1 for a corpus document), the document's, the role
        self.r_query = array("q")
        self.r_doc = array("q")
        self.r_role = array("b")
        self.example_query = array("q")  # the query occurrence of every example, and its line
        self.example_line = array("q")
        self.carried_occ: dict[str, dict[int, str]] = {"query": {}, "doc": {}}

    def _occurrence(self, text: str, line: int, carried: str | None, role: str) -> int:
        self.texts.append(text)
        self.lines.append(line)
        if carried is not None:
            self.carried_occ[role][len(self.texts) - 1] = carried
        return len(self.texts) - 1

    def add_document(self, line: int, text: str, carried: str | None) -> None:
        if self.source != _SOURCE_CORPUS:
            self.flush()
            self.source = _SOURCE_CORPUS
        text = normalise(text)
        if not text:
            self.counts["corpus_empty"] += 1
            return
        self.r_query.append(-1)
        self.r_doc.append(self._occurrence(text, line, carried, "doc"))
        self.r_role.append(_DOC)
        if len(self.texts) >= CHUNK_TEXTS:
            self.flush()

    def add_pair_block(self, lines: np.ndarray, anchors, positives, negatives=None) -> bool:
        """Lines of [anchor, positive] or [anchor, positive, negative] strings as columns: what add_examples does
        for each, in the same order, without a Python call per line. False, having added nothing, when a line
        needs add_examples to count or refuse it (a non-string, an empty text, a text equal to its anchor)."""
        columns = (anchors, positives) if negatives is None else (anchors, positives, negatives)
        if any(set(map(type, column)) != {str} for column in columns):
            return False
        columns = [normalise_all(column) for column in columns]
        anchors, *others = columns
        if not all(anchors) or not all(all(c) and not any(map(str.__eq__, anchors, c)) for c in others):
            return False
        self._pairs_source()
        n = len(anchors)
        self.counts["examples"] += n
        if negatives is not None:
            self.counts["given_negatives_read"] += n
            if self.given == "drop":
                columns = columns[:2]
        width = len(columns)
        q = len(self.texts) + width * np.arange(n, dtype=np.int64)  # each line's anchor occurrence
        self.texts.extend(chain.from_iterable(zip(*columns, strict=True)))
        self.lines.frombytes(np.repeat(lines, width).astype(np.int64).tobytes())
        self.example_query.frombytes(q.tobytes())
        self.example_line.frombytes(lines.astype(np.int64).tobytes())
        query, doc, role = [q], [q + 1], [_POS]
        if width == 3:
            keep = self.given == "keep"
            query.append(q if keep else np.full(n, -1))
            doc.append(q + 2)
            role.append(_NEG if keep else _DOC)
        # stacked by line: a line's positive, then its negative, as add_examples orders them
        self.r_query.frombytes(np.stack(query, axis=1).tobytes())
        self.r_doc.frombytes(np.stack(doc, axis=1).tobytes())
        self.r_role.frombytes(np.tile(np.array(role, dtype=np.int8), n).tobytes())
        if len(self.texts) >= CHUNK_TEXTS:
            self.flush()
        return True

    def _given_negative(self, q: int, query: str, text: str, line: int, doc_id: str | None) -> None:
        text = normalise(text)
        if not text or text == query:
            self.counts["empty_negatives" if not text else "negatives_equal_to_anchor"] += 1
            return
        self.counts["given_negatives_read"] += 1
        if self.given == "drop":
            return
        keep = self.given == "keep"
        self.r_query.append(q if keep else -1)
        self.r_doc.append(self._occurrence(text, line, doc_id, "doc"))
        self.r_role.append(_NEG if keep else _DOC)

    def _pairs_source(self) -> None:
        if self.source != _SOURCE_PAIRS:
            self.flush()
            self.source = _SOURCE_PAIRS

    def add_examples(self, line: int, examples: list[Example]) -> None:
        self._pairs_source()
        for query, query_id, positives, negatives in examples:
            self.counts["examples"] += 1
            query = normalise(query)
            if not query:
                self.counts["empty_anchors"] += 1
                continue
            pos = []
            for text, doc_id in positives:
                text = normalise(text)
                if not text:
                    self.counts["empty_positives"] += 1
                elif text == query:
                    self.counts["positives_equal_to_anchor"] += 1
                else:
                    pos.append((text, doc_id))
            if not pos:
                self.counts["examples_without_positive"] += 1
                continue
            q = self._occurrence(query, line, query_id, "query")
            self.example_query.append(q)
            self.example_line.append(line)
            for text, doc_id in pos:
                self.r_query.append(q)
                self.r_doc.append(self._occurrence(text, line, doc_id, "doc"))
                self.r_role.append(_POS)
            for text, doc_id in negatives:
                self._given_negative(q, query, text, line, doc_id)
        if len(self.texts) >= CHUNK_TEXTS:
            self.flush()

    def flush(self) -> None:
        if not self.texts:
            return
        numbers = self.index.add(self.texts)
        r_doc = np.frombuffer(self.r_doc, dtype=np.int64)
        if len(r_doc):
            query = np.frombuffer(self.r_query, dtype=np.int64)
            self.rel_query.append(np.where(query >= 0, numbers[np.maximum(query, 0)], -1))
            self.rel_doc.append(numbers[r_doc])
            self.rel_role.append(np.frombuffer(self.r_role, dtype=np.int8).copy())
        example_query = np.frombuffer(self.example_query, dtype=np.int64)
        if len(example_query):
            lines = np.frombuffer(self.example_line, dtype=np.int64)
            self.query_lines.append(np.stack([numbers[example_query], lines], axis=1))
        lines = np.frombuffer(self.lines, dtype=np.int64)
        for role, occurrences in (("query", example_query), ("doc", r_doc)):
            self.tables[role].add(
                numbers[occurrences], occurrences, self.texts, lines, self.source, self.carried_occ[role]
            )
        self._reset()


@dataclass
class PairTables:
    """Where read_pairs writes; the first three are what `prepare` reads."""

    corpus: str
    queries: str
    qrels: str
    query_lines: str
    doc_hashes: str
    manifest: str


def read_pairs(pairs: str, corpus: str | None, settings: PairSettings, out: PairTables) -> dict:
    """Read a pair file (and an optional corpus) into BEIR tables and the id map; return the counts."""
    retain_freed_memory()
    counts: Counter = Counter()
    source, _ = split_ref(pairs)
    keep = total = None
    if settings.max_pairs is not None:
        total = count_records(pairs, settings.pairs_revision)
        keep = sample_mask(total, settings.max_pairs, settings.seed)
        log.info(
            "max_pairs %d: %s of %d records (seed %d)",
            settings.max_pairs,
            "seeded sample" if keep is not None else "all",
            total,
            settings.seed,
        )
    source_paths = {_SOURCE_PAIRS: source, _SOURCE_CORPUS: corpus}
    index = TextIndex()
    with _cycle_collector_paused(), atomic_output(out.queries) as queries_tmp, atomic_output(out.corpus) as corpus_tmp:
        queries = RoleTable(queries_tmp, index, "query")
        docs = RoleTable(corpus_tmp, index, "document")
        builder = PairBuilder(index, queries, docs, settings.given_negatives, counts)
        if corpus:
            for line, text, doc_id in corpus_documents(corpus, counts):
                builder.add_document(line, text, doc_id)
        if is_jsonl(source):
            read_jsonl(source, builder, settings.set_mode, keep, counts)
        else:
            read_table(pairs, builder, settings, keep, counts)
        builder.flush()
        index.close()
        queries.close(source_paths)
        docs.close(source_paths)
        if counts["records"] == 0:
            raise InputError(f"{pairs}: no pairs to read")
        if not len(queries.rows[0]):
            raise InputError(f"{pairs}: no line has both an anchor and a positive; nothing to mine")
        result = _write_qrels_and_id_map(index, builder, queries, docs, counts, source_paths, out)
    shape = next(k.split(":", 1)[1] for k in counts if k.startswith("shape:"))
    result["shape"] = SHAPES[shape]
    c = result["counts"]
    log.info(
        "%s (%s): %d records, %d queries (%d repeated anchors merged), %d documents, %d positives, "
        "%d given negatives read (%s: %d kept), %d own texts excluded",
        pairs,
        SHAPES[shape],
        c["records"],
        c["queries"],
        c["repeated_anchors_merged"],
        c["documents"],
        c["positives"],
        c["given_negatives_read"],
        settings.given_negatives,
        c["given_negatives_kept"],
        c["own_text_excluded"],
    )
    for role in ("document", "query"):
        if c[f"{role}_ids_merged"]:
            log.warning(
                "%d %s ids name a text an earlier %s already has: merged into its row (doc_hashes.parquet "
                "merged_ids lists them; query_lines.parquet, the lines of each query)",
                c[f"{role}_ids_merged"],
                role,
                role,
            )
    skipped = {k: c[k] for k in SKIP_COUNTS if c[k]}
    if skipped:
        log.warning("skipped: %s", ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in skipped.items()))
    manifest = {
        "inputs": _input_fingerprints(pairs, corpus, settings.pairs_revision),
        "shape": SHAPES[shape],
        "settings": asdict(settings),
        "sample": None if keep is None else {"records": total, "kept": int(keep.sum()), "seed": settings.seed},
        "counts": result["counts"],
    }
    write_json(out.manifest, manifest, ensure_ascii=False)
    return result


def _ids_by_row(ids: dict[int, list[str]], row_of: np.ndarray, rows: int) -> pa.Array:
    """A list of ids for each of `rows` table rows (`ids` by text number, mostly none), built from offsets:
    no Python object for the rows without."""
    numbers = np.fromiter(ids, np.int64, len(ids))
    order = np.argsort(row_of[numbers], kind="stable")
    sizes = np.zeros(rows, dtype=np.int32)
    sizes[row_of[numbers]] = [len(ids[n]) for n in numbers.tolist()]
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int32)
    values = pa.array([i for n in numbers[order].tolist() for i in ids[n]], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _input_fingerprints(pairs: str, corpus: str | None, revision: str | None) -> dict:
    from negflow.provenance import data_fingerprint

    inputs = {"pairs": data_fingerprint(split_ref(pairs)[0], revision)}
    if corpus:
        inputs["corpus"] = data_fingerprint(corpus)
    return inputs


def _write_qrels_and_id_map(
    index: TextIndex,
    builder: PairBuilder,
    queries: RoleTable,
    docs: RoleTable,
    counts: Counter,
    source_paths: dict[int, str],
    out: PairTables,
) -> dict:
    """The qrels (one row per query and document: a positive wins over a given negative of the same pair;
    the query's own text as a document is an excluded row) and the id map, once every text is written."""
    n = index.size

    def joined(chunks: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(chunks) if chunks else np.empty(0, dtype)

    rel_query, rel_doc, rel_role = (
        joined(builder.rel_query, np.int64),
        joined(builder.rel_doc, np.int64),
        joined(builder.rel_role, np.int8),
    )
    judged = rel_role != _DOC
    q, d, role = rel_query[judged], rel_doc[judged], rel_role[judged]
    unique_key, first, inverse = np.unique(q * np.int64(n) + d, return_index=True, return_inverse=True)
    best = np.ones(len(unique_key), dtype=np.int8)  # _POS: most files give no negatives
    if np.any(role == _NEG):
        best[:] = _NEG
        np.maximum.at(best, inverse, role)
        given = np.zeros(len(unique_key), dtype=bool)
        np.logical_or.at(given, inverse, role == _NEG)
        counts["given_negatives_also_positive"] = int((given & (best == _POS)).sum())
    same = queries.rows[0][docs.row_of[queries.rows[0]] >= 0]  # queries whose own text is a document
    q_all = np.r_[q[first], same]
    d_all = np.r_[d[first], same]
    grade = np.r_[np.where(best == _POS, POSITIVE, GIVEN_NEGATIVE), np.full(len(same), SAME_TEXT)]
    appearance = np.r_[first, np.full(len(same), len(q))]  # a query's rows in order of appearance, own text last
    order = np.argsort(queries.row_of[q_all] * np.int64(len(q) + 1) + appearance)  # by query row, then appearance
    qrels = pa.table(
        {
            "query-id": queries.ids_of(q_all[order]),
            "corpus-id": docs.ids_of(d_all[order]),
            "score": pa.array(grade[order], pa.int32()),
        }
    )
    with atomic_output(out.qrels) as tmp:
        pq.write_table(qrels, tmp, **PARQUET_OPTIONS)
    del qrels

    merged = docs.merged_ids()
    counts["document_ids_merged"] = sum(map(len, merged.values()))
    counts["query_ids_merged"] = sum(map(len, queries.merged_ids().values()))
    with atomic_output(out.doc_hashes) as tmp:
        rows = docs.rows[0]
        hashes = index.hex_ids(rows)
        table = {
            "doc_id": docs.ids_of(rows, hashes),
            "text_hash": hashes,
            "first_source": pa.DictionaryArray.from_arrays(pa.array(docs.sources[0]), ["pairs", "corpus"]),
            "first_line": pa.array(docs.lines[0]),
            "merged_ids": _ids_by_row(merged, docs.row_of, len(rows)),
        }
        pq.write_table(pa.table(table), tmp, **{**PARQUET_OPTIONS, "use_dictionary": ["first_source"]})
    lines = joined(builder.query_lines, np.int64).reshape(-1, 2)  # (query, line) in reading order
    lines = lines[np.argsort(queries.row_of[lines[:, 0]], kind="stable")]  # by query row, lines stay in order
    lines = lines[np.r_[True, np.any(lines[1:] != lines[:-1], axis=1)]] if len(lines) else lines
    rows = queries.rows[0]
    offsets = np.r_[0, np.cumsum(np.bincount(queries.row_of[lines[:, 0]], minlength=len(rows)))]
    with atomic_output(out.query_lines) as tmp:
        hashes = index.hex_ids(rows)
        table = {
            "query_id": queries.ids_of(rows, hashes),
            "text_hash": hashes,
            "source": pa.DictionaryArray.from_arrays(np.zeros(len(rows), np.int8), [source_paths[_SOURCE_PAIRS]]),
            "lines": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(lines[:, 1])),
        }
        pq.write_table(pa.table(table), tmp, **{**PARQUET_OPTIONS, "use_dictionary": ["source"]})

    result_counts = {
        "records": counts["records"],
        "examples": counts["examples"],
        "queries": len(queries.rows[0]),
        "documents": len(docs.rows[0]),
        "distinct_texts": n,
        "positives": int((best == _POS).sum()),
        "given_negatives_kept": int((best == _NEG).sum()),
        "own_text_excluded": len(same),
        "repeated_anchors_merged": counts["examples"]
        - counts["empty_anchors"]
        - counts["examples_without_positive"]
        - len(queries.rows[0]),
    }
    for key in ("corpus_read", "given_negatives_read", "document_ids_merged", "query_ids_merged", *SKIP_COUNTS):
        result_counts[key] = int(counts[key])
    return {"counts": result_counts}
