"""Stage 0 for pair data: read (query, positive[, negative]) files in the shapes people hold and write them as
the BEIR tables `prepare` reads (corpus, queries, qrels), plus an id map back to the source lines.

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
so it grows with the distinct texts, never with Python objects per line.
"""

from __future__ import annotations

import ctypes
import gc
import io
import logging
import os
import re
import unicodedata
from array import array
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from itertools import chain, compress
from operator import itemgetter
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from isal import igzip
from tqdm import tqdm

from negflow.beir import GIVEN_NEGATIVE, POSITIVE, SAME_TEXT, iter_records
from negflow.errors import InputError
from negflow.files import atomic_output, open_parquet, write_json
from negflow.refs import split_ref

log = logging.getLogger("negflow")

SET_MODES = ("first", "all")
GIVEN_NEGATIVE_POLICIES = ("pool", "keep", "drop")
CHUNK_RECORDS = 200_000  # table rows read at once
CHUNK_TEXTS = 500_000  # text occurrences numbered at once (the chunk's Python strings are what it holds)
# Texts and hash ids are nearly all distinct: dictionary pages and min/max statistics only cost time, and
# compressing them (read once, by prepare) would double this stage's time for a smaller intermediate file.
PARQUET_OPTIONS = {"use_dictionary": False, "write_statistics": False, "compression": "none"}
BLOCK_BYTES = 1 << 21  # lines read and parsed at once (about 4,000 pair lines)
# Counts of what was skipped, each worth a warning.
SKIP_COUNTS = (
    "empty_anchors",
    "empty_positives",
    "positives_equal_to_anchor",
    "examples_without_positive",
    "empty_negatives",
    "negatives_equal_to_anchor",
    "given_negatives_also_positive",
    "corpus_empty",
)
# Four hex digits of every 16-bit value, as the little-endian uint32 whose bytes read in order.
HEX_QUADS = np.frombuffer("".join(f"{i:04x}" for i in range(1 << 16)).encode(), dtype="<u4")

SHAPES = {
    "pair": '["anchor", "positive"]',
    "triplet": '["anchor", "positive", "negative"]',
    "set": '{"set": [...]}',
    "query_pos": '{"query", "pos", "neg"?}',
    "anchor_positive": '{"anchor", "positive", "negative"?}',
    "tevatron": '{"query_id", "query", "positive_passages", "negative_passages"?}',
    "table": "table columns",
}

# Roles of a (query, document) relation while reading; only POS and NEG become qrels rows.
_POS, _NEG, _DOC = 1, 0, 2
_SOURCE_PAIRS, _SOURCE_CORPUS = 0, 1
_OPEN, _CLOSE, _COMMA, _NEWLINE = b"[],\n"  # the bytes a block of JSON list lines is checked and joined by
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


def normalise(text: str) -> str:
    """The form two texts must share to be one query or document: Unicode NFC, surrounding space trimmed
    (ASCII is already NFC, which spares the call on most texts)."""
    return (text if text.isascii() else unicodedata.normalize("NFC", text)).strip()


def _normalised(texts: list[str]) -> list[str]:
    """`normalise` over a column; a column that is all ASCII (one check over the joined texts, most columns)
    is only trimmed, without a Python call per text."""
    if "".join(texts).isascii():
        return list(map(str.strip, texts))
    return list(map(normalise, texts))


def text_hash(text: str) -> str:
    """The stable id of a normalised text: XXH3-128 of its UTF-8 bytes as 32 hex digits. XXH3's output is
    fixed by its specification, so the id is the same on every machine and run (never Python's hash())."""
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


@dataclass(frozen=True)
class PairSettings:
    """The settings that decide what read_pairs writes (see config/schema.yaml)."""

    set_mode: str = "first"
    given_negatives: str = "pool"
    max_pairs: int | None = None
    seed: int = 42
    anchor_column: str | None = None
    positive_column: str | None = None
    negative_column: str | None = None

    @classmethod
    def from_settings(cls, settings: dict) -> PairSettings:
        """The read_pairs subset of a dataset's settings (other keys are ignored)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})

    def __post_init__(self):
        if self.set_mode not in SET_MODES:
            raise ValueError(f"set_mode must be one of {SET_MODES}, got {self.set_mode!r}")
        if self.given_negatives not in GIVEN_NEGATIVE_POLICIES:
            raise ValueError(f"given_negatives must be one of {GIVEN_NEGATIVE_POLICIES}, got {self.given_negatives!r}")


# One example: (query text, carried query id or None, positives, negatives); positives and negatives are
# lists of (text, carried doc id or None). Texts are raw here; the builder normalises them.
Example = tuple[str, str | None, list[tuple[str, str | None]], list[tuple[str, str | None]]]


# ---------------------------------------------------------------------------------------------- sources


def _is_jsonl(path: str) -> bool:
    return path.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz"))


def _open_binary(path: str):
    try:
        if path.endswith(".gz"):  # ISA-L inflates twice as fast as zlib
            return igzip.open(path, "rb")
        return open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None


def _load_table_source(ref: str) -> tuple[str, pa.Table | pq.ParquetFile]:
    """A Parquet file, or a hub dataset (id or a local folder of one, e.g. a `hf download`) loaded with
    `datasets` into a memory-mapped Arrow table."""
    source, split = split_ref(ref)
    if source.endswith(".parquet"):
        if not os.path.isfile(source):
            raise InputError(f"{source}: file not found")
        return source, open_parquet(source)
    import datasets

    try:
        dataset = datasets.load_dataset(source, split=split or "train")
    except Exception as e:  # the hub raises many types; the user needs one line
        raise InputError(f"hub dataset {ref}: cannot load ({type(e).__name__}: {e})") from None
    return f"{source}[{split or 'train'}]", dataset.data.table


def _table_batches(table, columns: list[str]) -> Iterator[pa.RecordBatch]:
    if isinstance(table, pq.ParquetFile):
        yield from table.iter_batches(batch_size=CHUNK_RECORDS, columns=columns)
    else:
        yield from table.select(columns).to_batches(max_chunksize=CHUNK_RECORDS)


def _table_schema(table) -> pa.Schema:
    return table.schema_arrow if isinstance(table, pq.ParquetFile) else table.schema


def _table_rows(table) -> int:
    return table.metadata.num_rows if isinstance(table, pq.ParquetFile) else table.num_rows


def count_records(ref: str) -> int:
    """Non-blank lines of a JSONL file, rows of a table: what a seeded `max_pairs` sample draws from."""
    source, _ = split_ref(ref)
    if _is_jsonl(source):
        with _open_binary(source) as f:
            return sum(sum(1 for raw in data.split(b"\n") if raw.strip()) for data in _line_blocks(f))
    return _table_rows(_load_table_source(ref)[1])


def sample_mask(total: int, max_pairs: int | None, seed: int) -> np.ndarray | None:
    """Which records (by ordinal among non-blank ones) a `max_pairs` sample keeps; None keeps all."""
    if max_pairs is None or max_pairs >= total:
        return None
    mask = np.zeros(total, dtype=bool)
    mask[np.random.default_rng(seed).choice(total, size=max_pairs, replace=False)] = True
    return mask


# ---------------------------------------------------------------------------------------------- shapes


def line_shape(obj, where: str) -> str:
    """The shape of one parsed line, or a one-line error saying which shapes exist."""
    if isinstance(obj, list):
        if len(obj) == 2:
            return "pair"
        if len(obj) == 3:
            return "triplet"
        raise InputError(
            f"{where}: a list of {len(obj)} item{'s' if len(obj) != 1 else ''}; expected [anchor, positive] or "
            "[anchor, positive, negative]"
        )
    if isinstance(obj, dict):
        if "set" in obj:
            return "set"
        if "positive_passages" in obj:
            return "tevatron"
        if "query" in obj and "pos" in obj:
            return "query_pos"
        if "anchor" in obj and "positive" in obj:
            return "anchor_positive"
    keys = f" with keys {sorted(obj)[:6]}" if isinstance(obj, dict) else ""
    raise InputError(
        f"{where}: matches no pair shape ({type(obj).__name__}{keys}); expected one of "
        + ", ".join(v for k, v in SHAPES.items() if k != "table")
    )


def _string(value, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: {what} must be a string, got {_type_name(value)}")
    return value


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _strings(value, where: str, what: str) -> list[tuple[str, None]]:
    """A string or a list of strings (FlagEmbedding writes `pos`/`neg` either way)."""
    if isinstance(value, str):
        return [(value, None)]
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise InputError(f"{where}: {what}[{i}] must be a string, got {_type_name(item)}")
        return [(item, None) for item in value]
    raise InputError(f"{where}: {what} must be a string or a list of strings, got {_type_name(value)}")


def _passages(value, where: str, what: str) -> list[tuple[str, str | None]]:
    """Tevatron passages: [{"docid", "title", "text"}]; the title joins the text as BEIR's does."""
    if not isinstance(value, list):
        raise InputError(f"{where}: {what} must be a list of passages, got {_type_name(value)}")
    out = []
    for i, passage in enumerate(value):
        if not isinstance(passage, dict):
            raise InputError(f"{where}: {what}[{i}] must be an object with docid, title, text")
        text = _string(passage.get("text"), where, f"{what}[{i}].text")
        title = passage.get("title") or ""
        title = _string(title, where, f"{what}[{i}].title")
        docid = passage.get("docid")
        if docid is not None and not isinstance(docid, (str, int)):
            raise InputError(f"{where}: {what}[{i}].docid must be a string, got {_type_name(docid)}")
        joined = f"{title} {text}" if title.strip() else text
        out.append((joined, None if docid is None else str(docid)))
    return out


def line_examples(obj, shape: str, where: str, set_mode: str) -> list[Example]:
    """The examples of one line of a known shape (every member's type checked)."""
    if shape in ("pair", "triplet"):
        for i, item in enumerate(obj):
            if not isinstance(item, str):
                raise InputError(f"{where}: item {i + 1} of the list must be a string, got {_type_name(item)}")
        return [(obj[0], None, [(obj[1], None)], [(obj[2], None)] if shape == "triplet" else [])]
    if shape == "set":
        members = obj["set"]
        if not isinstance(members, list):
            raise InputError(f"{where}: 'set' must be a list of strings, got {_type_name(members)}")
        for i, item in enumerate(members):
            if not isinstance(item, str):
                raise InputError(f"{where}: set[{i}] must be a string, got {_type_name(item)}")
        if set_mode == "first":
            return [(members[0], None, [(m, None) for m in members[1:]], [])] if members else []
        return [(m, None, [(o, None) for j, o in enumerate(members) if j != i], []) for i, m in enumerate(members)]
    if shape == "query_pos":
        neg = _strings(obj["neg"], where, "'neg'") if obj.get("neg") is not None else []
        return [(_string(obj["query"], where, "'query'"), None, _strings(obj["pos"], where, "'pos'"), neg)]
    if shape == "anchor_positive":
        neg = _strings(obj["negative"], where, "'negative'") if obj.get("negative") is not None else []
        positive = _strings(obj["positive"], where, "'positive'")
        return [(_string(obj["anchor"], where, "'anchor'"), None, positive, neg)]
    # tevatron
    query_id = obj.get("query_id")
    if query_id is not None and not isinstance(query_id, (str, int)):
        raise InputError(f"{where}: 'query_id' must be a string, got {_type_name(query_id)}")
    negatives = obj.get("negative_passages")
    return [
        (
            _string(obj.get("query"), where, "'query'"),
            None if query_id is None else str(query_id),
            _passages(obj["positive_passages"], where, "positive_passages"),
            _passages(negatives, where, "negative_passages") if negatives is not None else [],
        )
    ]


def read_jsonl(path: str, builder: PairBuilder, set_mode: str, keep: np.ndarray | None, counts: Counter) -> None:
    """Feed every non-blank line (of the sample, when `keep` is given) to the builder, a block of lines at a
    time. The first line fixes the shape; a line of another shape is an error naming both lines. Once a
    file's shape is a pair or triplet, a block whose lines are all such lists of strings goes to the builder
    as columns (`add_pair_block`); any other block is read line by line, which finds and names a bad line."""
    shape = first_line = None
    ordinal = 0  # non-blank lines before this block: the index into `keep`
    line_no = 0
    progress = tqdm(desc=f"reading {os.path.basename(path)}", unit=" lines", mininterval=10, unit_scale=True)
    with _open_binary(path) as f:
        for data in _line_blocks(f):
            lists = _block_lists(data) if shape in ("pair", "triplet") else None
            columns = None if lists is None else _list_columns(lists, 2 if shape == "pair" else 3)
            if columns is not None:
                lines = np.arange(line_no + 1, line_no + len(lists) + 1, dtype=np.int64)
                if keep is not None:
                    picked = keep[ordinal : ordinal + len(lists)]
                    columns, lines = [list(compress(c, picked)) for c in columns], lines[picked]
                if not len(lines) or builder.add_pair_block(lines, *columns):
                    line_no += len(lists)
                    ordinal += len(lists)
                    counts["records"] += len(lines)
                    progress.update(len(lists))
                    continue
            block = data.split(b"\n")
            start, line_no = line_no + 1, line_no + len(block)
            progress.update(len(block))
            for line, raw in enumerate(block, start=start):
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError as e:
                    if not raw.strip():
                        continue
                    try:
                        raw.decode("utf-8")
                    except UnicodeDecodeError as u:
                        raise InputError(f"{path}:{line}: not valid UTF-8 ({u.reason} at byte {u.start})") from None
                    raise InputError(f"{path}:{line}: malformed JSON ({e})") from None
                ordinal += 1
                if keep is not None and not keep[ordinal - 1]:
                    continue
                counts["records"] += 1
                where = f"{path}:{line}"
                this = line_shape(obj, where)
                if shape is None:
                    shape, first_line = this, line
                    counts["shape:" + shape] = 1
                elif this != shape:
                    raise InputError(
                        f"{where}: a line of shape {SHAPES[this]} in a file whose line {first_line} set the shape "
                        f"{SHAPES[shape]}; a pair file keeps one shape"
                    )
                builder.add_examples(line, line_examples(obj, shape, where, set_mode))
    progress.close()


def _line_blocks(f) -> Iterator[bytes]:
    """The lines of a binary file in blocks of about BLOCK_BYTES (whole lines, without the block's last
    newline): one large read split in C costs far less than a readline per line."""
    rest = b""
    while data := f.read(BLOCK_BYTES):
        data = rest + data
        end = data.rfind(b"\n") + 1
        if end:
            yield data[: end - 1]
        rest = data[end:]
    if rest:
        yield rest


def _block_lists(data: bytes) -> list | None:
    """Every line of a block parsed in one call, as one JSON array of the lines joined by commas (no bytes
    object per line), when every line begins with '[' and ends with ']'; else None (a blank line, a CR,
    anything else): the block is read line by line. A value cannot span two lines unless the ']' ending the
    first closes a list nested in it, which the string checks of the columns refuse; with as many values as
    lines, each line then holds exactly one."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if not len(raw) or raw[0] != _OPEN or raw[-1] != _CLOSE:
        return None
    newlines = np.flatnonzero(raw == _NEWLINE)
    if np.any(raw[newlines + 1] != _OPEN) or np.any(raw[newlines - 1] != _CLOSE):
        return None
    joined = np.empty(len(raw) + 2, dtype=np.uint8)
    joined[0], joined[1:-1], joined[-1] = _OPEN, raw, _CLOSE
    joined[newlines + 1] = _COMMA
    try:
        lists = orjson.loads(memoryview(joined))
    except orjson.JSONDecodeError:
        return None
    return lists if len(lists) == len(newlines) + 1 else None


def _list_columns(lists: list, n_items: int) -> list[list] | None:
    """The items of every line of a block as `n_items` columns, when each line is a JSON list of `n_items`
    (else None: read line by line). Columns by itemgetter cost a fifth of zip(*lines)."""
    if set(map(type, lists)) == {list} and set(map(len, lists)) == {n_items}:
        return [list(map(itemgetter(i), lists)) for i in range(n_items)]
    return None


def table_columns(schema: pa.Schema, s: PairSettings, where: str) -> dict[str, str]:
    """The anchor, positive and (optional) negative columns: as configured, else anchor/positive/negative
    when present, else the first two columns (as sentence-transformers does)."""
    names = schema.names
    chosen = {}
    for role, configured in (("anchor", s.anchor_column), ("positive", s.positive_column)):
        if configured is not None:
            if configured not in names:
                raise InputError(f"{where}: no column '{configured}' ({role}_column); columns: {names}")
            chosen[role] = configured
    if len(chosen) < 2:
        defaults = ("anchor", "positive") if {"anchor", "positive"} <= set(names) else tuple(names[:2])
        if len(defaults) < 2:
            raise InputError(f"{where}: needs two columns (anchor, positive); columns: {names}")
        for role, default in zip(("anchor", "positive"), defaults, strict=True):
            chosen.setdefault(role, default)
    if s.negative_column is not None:
        if s.negative_column not in names:
            raise InputError(f"{where}: no column '{s.negative_column}' (negative_column); columns: {names}")
        chosen["negative"] = s.negative_column
    elif "negative" in names and chosen["anchor"] == "anchor":
        chosen["negative"] = "negative"
    for role, column in chosen.items():
        kind = schema.field(column).type
        value = kind.value_type if pa.types.is_list(kind) or pa.types.is_large_list(kind) else kind
        if not (pa.types.is_string(value) or pa.types.is_large_string(value)) or (
            role == "anchor" and value is not kind
        ):
            expected = "strings" if role == "anchor" else "strings or lists of strings"
            raise InputError(f"{where}: column '{column}' ({role}) holds {kind}, expected {expected}")
    return chosen


def read_table(ref: str, builder: PairBuilder, s: PairSettings, keep: np.ndarray | None, counts: Counter) -> None:
    """Feed every row of a Parquet file or hub dataset (of the sample, when `keep` is given) to the builder.
    A null cell counts as empty."""
    where, table = _load_table_source(ref)
    columns = table_columns(_table_schema(table), s, where)
    counts["shape:table"] = 1
    row = 0
    progress = tqdm(desc=f"reading {where}", unit=" rows", mininterval=10, unit_scale=True, total=_table_rows(table))
    for batch in _table_batches(table, list(dict.fromkeys(columns.values()))):
        values = {role: batch.column(column).to_pylist() for role, column in columns.items()}
        start, row = row + 1, row + batch.num_rows
        rows = np.arange(start, row + 1, dtype=np.int64)
        if keep is not None:
            picked = keep[start - 1 : row]
            values = {role: list(compress(v, picked)) for role, v in values.items()}
            rows = rows[picked]
        counts["records"] += len(rows)
        if builder.add_pair_block(rows, values["anchor"], values["positive"], values.get("negative")):
            progress.update(batch.num_rows)
            continue
        negatives = values.get("negative", [None] * len(rows))
        for line, anchor, positive, negative in zip(
            rows.tolist(), values["anchor"], values["positive"], negatives, strict=True
        ):
            builder.add_examples(
                line,
                [
                    (
                        anchor or "",
                        None,
                        [(p or "", None) for p in (positive if isinstance(positive, list) else [positive])],
                        [(n or "", None) for n in (negative if isinstance(negative, list) else [negative])]
                        if negative is not None
                        else [],
                    )
                ],
            )
        progress.update(batch.num_rows)
    progress.close()


def corpus_documents(ref: str, counts: Counter) -> Iterator[tuple[int, str, str | None]]:
    """(line, text, carried id) of `corpus`: BEIR lines {_id, title, text} or candidate-pool lines {"text"}
    (FlagEmbedding's candidate_pool), as JSONL or Parquet; a hub BEIR corpus by id."""
    for where, obj in iter_records(ref, "corpus"):
        line = int(re.search(r"(\d+)$", where)[1])  # `path:LINE`, `path row N`, `id[corpus] row N`
        text = _string(obj.get("text"), where, "'text'")
        title = obj.get("title") or ""
        title = _string(title, where, "'title'")
        doc_id = obj.get("_id")
        if doc_id is not None and not isinstance(doc_id, (str, int)):
            raise InputError(f"{where}: '_id' must be a string, got {_type_name(doc_id)}")
        counts["corpus_read"] += 1
        yield line, (f"{title} {text}" if title.strip() else text), None if doc_id is None else str(doc_id)


# ---------------------------------------------------------------------------------------------- builder


class KeyRuns:
    """64-bit key prefixes with their text numbers, as sorted runs of doubling size (a log-structured merge):
    a lookup searches each run, and adding merges runs of equal size, so each key is copied O(log n) times in
    all rather than once per chunk."""

    def __init__(self):
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (prefixes sorted, numbers)

    def find(self, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For sorted unique `hi`: whether each is known, and its number where it is."""
        found = np.zeros(len(hi), dtype=bool)
        index = np.zeros(len(hi), dtype=np.int64)
        for run_hi, run_index in self.runs:
            pos = np.minimum(np.searchsorted(run_hi, hi), len(run_hi) - 1)
            hit = run_hi[pos] == hi
            found |= hit
            index[hit] = run_index[pos[hit]]
        return found, index

    def add(self, hi: np.ndarray, index: np.ndarray) -> None:
        """Add sorted prefixes that `find` did not know."""
        self.runs.append((hi, index))
        while len(self.runs) > 1 and len(self.runs[-1][0]) >= len(self.runs[-2][0]):
            newer, older = self.runs.pop(), self.runs.pop()
            merged_hi = np.concatenate([older[0], newer[0]])
            order = np.argsort(merged_hi, kind="stable")  # two sorted runs: a linear merge
            self.runs.append((merged_hi[order], np.concatenate([older[1], newer[1]])[order]))


class TextIndex:
    """Distinct normalised texts, numbered in first-seen order by their 128-bit keys (XXH3-128 of the UTF-8
    bytes). Memory holds each text's key (by number) and the sorted 64-bit prefixes with their numbers; two
    texts that share a prefix but not the rest are an error, never a silent merge."""

    def __init__(self):
        self._lookup = KeyRuns()
        self._keys = np.empty((1024, 2), dtype=np.uint64)  # in number order; grows by doubling
        self.size = 0

    def add(self, texts: list[str]) -> np.ndarray:
        """The number of each normalised text, numbering unseen ones as they appear. Each text's UTF-8 bytes
        and digest live only while it is hashed: a list of them per chunk would be allocated and freed in
        bulk, and every chunk would fault in fresh memory for it."""
        digests = np.fromiter(map(xxhash.xxh3_128_digest, map(str.encode, texts)), dtype="S16", count=len(texts))
        keys = digests.view(">u8").reshape(-1, 2).astype(np.uint64)
        hi, lo = keys[:, 0], keys[:, 1]
        unique_hi, first, inverse = np.unique(hi, return_index=True, return_inverse=True)
        found, index = self._lookup.find(unique_hi)
        known_lo = self._keys[index[found], 1]
        if np.any(lo[first][inverse] != lo) or np.any(known_lo != lo[first[found]]):
            raise InputError("two different texts share a 64-bit key prefix; please report this")
        new = np.flatnonzero(~found)  # sorted by key
        by_appearance = new[np.argsort(first[new], kind="stable")]
        index[by_appearance] = self.size + np.arange(len(new))
        if len(new):
            if self.size + len(new) > len(self._keys):
                grown = np.empty((2 * (self.size + len(new)), 2), dtype=np.uint64)
                grown[: self.size] = self._keys[: self.size]
                self._keys = grown
            self._keys[self.size : self.size + len(new)] = keys[first[by_appearance]]
            self.size += len(new)
            self._lookup.add(unique_hi[new], index[new])
        return index[inverse]

    def close(self) -> None:
        self._lookup = None  # every text is numbered: free the lookup

    def hex_ids(self, rows: np.ndarray) -> pa.Array:
        """The content hash of texts `rows` as 32 hex digits, built from the keys without a Python string each."""
        chars = HEX_QUADS[self._keys[rows].astype(">u8").view(">u2")]  # (rows, 8) quads of hex digits
        offsets = np.arange(0, 32 * len(rows) + 1, 32, dtype=np.int32)
        return pa.StringArray.from_buffers(len(rows), pa.py_buffer(offsets), pa.py_buffer(chars))


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

    def add(self, numbers: np.ndarray, occurrences: np.ndarray, texts, lines, source: int, carried: dict):
        """Write the texts among `numbers` (the role's occurrences in a chunk, in order) not written yet."""
        if len(self.written) < self.index.size:
            self.written = np.r_[self.written, np.zeros(self.index.size - len(self.written), dtype=bool)]
        unique, first = np.unique(numbers, return_index=True)
        first = np.sort(first[~self.written[unique]])  # each new text at its first appearance, in order
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
        named = [carried.get(o) for o in occurrences.tolist()] if carried else []
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
        columns = [_normalised(column) for column in columns]
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
        total = count_records(pairs)
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
        if _is_jsonl(source):
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
    skipped = {k: c[k] for k in SKIP_COUNTS if c[k]}
    if skipped:
        log.warning("skipped: %s", ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in skipped.items()))
    manifest = {
        "inputs": _input_fingerprints(pairs, corpus),
        "shape": SHAPES[shape],
        "settings": asdict(settings),
        "sample": None if keep is None else {"records": total, "kept": int(keep.sum()), "seed": settings.seed},
        "counts": result["counts"],
    }
    write_json(out.manifest, manifest, ensure_ascii=False)
    return result


def _input_fingerprints(pairs: str, corpus: str | None) -> dict:
    from negflow.provenance import data_fingerprint

    inputs = {"pairs": data_fingerprint(split_ref(pairs)[0])}
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

    with atomic_output(out.doc_hashes) as tmp:
        rows = docs.rows[0]
        hashes = index.hex_ids(rows)
        table = {
            "doc_id": docs.ids_of(rows, hashes),
            "text_hash": hashes,
            "first_source": pa.DictionaryArray.from_arrays(pa.array(docs.sources[0]), ["pairs", "corpus"]),
            "first_line": pa.array(docs.lines[0]),
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
    for key in ("corpus_read", "given_negatives_read", *SKIP_COUNTS):
        result_counts[key] = int(counts[key])
    return {"counts": result_counts}
