"""What a pair file may hold and how it is read: the line shapes (lists, objects, Tevatron records) and table
columns negflow accepts, the settings that read them (`PairSettings`), the sources (JSONL, Parquet, hub
datasets), a seeded `max_pairs` sample, and the block parsing that reads a file of JSON lists without a
Python call per line. Each reader feeds a `PairSink` (read_pairs' builder) and names the file and line of
anything it refuses.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields
from itertools import compress
from operator import itemgetter
from typing import Protocol

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from negflow.beir import READ_ERRORS, UTF8_BOM, iter_records, open_binary, read_error
from negflow.errors import InputError
from negflow.files import open_parquet
from negflow.grades import GIVEN_NEGATIVE_POLICIES
from negflow.progress import ProgressBar
from negflow.refs import is_local_data, split_ref

log = logging.getLogger("negflow")

SET_MODES = ("first", "all")
CHUNK_RECORDS = 200_000  # table rows read at once
BLOCK_BYTES = 1 << 21  # lines read and parsed at once (about 4,000 pair lines)
MAX_LINE_BYTES = 64 << 20  # one record: far above any pair, far below a whole data set on one line

SHAPES = {
    "pair": '["anchor", "positive"]',
    "triplet": '["anchor", "positive", "negative"]',
    "set": '{"set": [...]}',
    "query_pos": '{"query", "pos", "neg"?}',
    "anchor_positive": '{"anchor", "positive", "negative"?}',
    "tevatron": '{"query_id", "query", "positive_passages", "negative_passages"?}',
    "table": "table columns",
}

_OPEN, _CLOSE, _COMMA, _NEWLINE = b"[],\n"  # the bytes a block of JSON list lines is checked and joined by


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
    pairs_revision: str | None = None

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


class PairSink(Protocol):
    """Where the readers put what they read (read_pairs.PairBuilder)."""

    def add_pair_block(self, lines: np.ndarray, anchors: list, positives: list, negatives: list | None = None) -> bool:
        """Lines of (anchor, positive[, negative]) strings as columns; False, having added nothing, when some
        line needs `add_examples` to count or refuse it."""

    def add_examples(self, line: int, examples: list[Example]) -> None:
        """The examples of one line."""


# ---------------------------------------------------------------------------------------------- sources


def is_jsonl(path: str) -> bool:
    return path.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz"))


def _load_table_source(ref: str, revision: str | None = None) -> tuple[str, pa.Table | pq.ParquetFile]:
    """A Parquet file, or a hub dataset (id or a local folder of one, e.g. a `hf download`; a hub id at
    `revision`) loaded with `datasets` into a memory-mapped Arrow table."""
    source, split = split_ref(ref)
    if source.endswith(".parquet"):
        if not os.path.isfile(source):
            raise InputError(f"{source}: file not found")
        return source, open_parquet(source)
    import datasets

    hub = not is_local_data(source)
    if hub and not (revision and re.fullmatch(r"[0-9a-f]{40}", revision)):
        log.warning(
            "hub pair dataset %s at %s, a floating reference: another copy may give other pairs; pin it with "
            "pairs_revision: <commit>",
            source,
            revision or "main",
        )
    try:
        dataset = datasets.load_dataset(source, split=split or "train", **({"revision": revision} if hub else {}))
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


def count_records(ref: str, revision: str | None = None) -> int:
    """Non-blank lines of a JSONL file, rows of a table: what a seeded `max_pairs` sample draws from."""
    source, _ = split_ref(ref)
    if is_jsonl(source):
        with open_binary(source) as f:
            return sum(sum(1 for raw in data.split(b"\n") if raw.strip()) for data in _line_blocks(f, source))
    return _table_rows(_load_table_source(ref, revision)[1])


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


def read_jsonl(path: str, builder: PairSink, set_mode: str, keep: np.ndarray | None, counts: Counter) -> None:
    """Feed every non-blank line (of the sample, when `keep` is given) to the builder, a block of lines at a
    time. The first line fixes the shape; a line of another shape is an error naming both lines. Once a
    file's shape is a pair or triplet, a block whose lines are all such lists of strings goes to the builder
    as columns (`add_pair_block`); any other block is read line by line, which finds and names a bad line."""
    shape = first_line = None
    ordinal = 0  # non-blank lines before this block: the index into `keep`
    line_no = 0
    progress = ProgressBar(desc=f"reading {os.path.basename(path)}", unit=" lines", mininterval=10, unit_scale=True)
    with open_binary(path) as f:
        for data in _line_blocks(f, path):
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
                if shape == "set" and not obj["set"]:
                    counts["empty_sets"] += 1  # no text at all: nothing to add, but counted
                builder.add_examples(line, line_examples(obj, shape, where, set_mode))
    progress.close()


def _line_blocks(f, path: str) -> Iterator[bytes]:
    """The lines of a binary file in blocks of about BLOCK_BYTES (whole lines, without the block's last
    newline): one large read split in C costs far less than a readline per line. A line longer than a read
    is gathered in pieces and joined once (linear however long), up to MAX_LINE_BYTES. A UTF-8 byte-order
    mark opening the file is dropped (editors on Windows write one)."""
    try:
        head = f.read(len(UTF8_BOM))
    except READ_ERRORS as e:
        raise read_error(path, 0, e) from None
    pending = [head] if head and head != UTF8_BOM else []  # the pieces of a line no read has ended yet
    pending_bytes, lines = sum(map(len, pending)), 0
    while True:
        try:
            data = f.read(BLOCK_BYTES)
        except READ_ERRORS as e:
            raise read_error(path, lines, e) from None
        if not data:
            break
        end = data.rfind(b"\n") + 1
        if not end:
            pending.append(data)
            pending_bytes += len(data)
            if pending_bytes > MAX_LINE_BYTES:
                raise InputError(
                    f"{path}:{lines + 1}: a line over {MAX_LINE_BYTES >> 20} MiB; pair files are JSON Lines, one "
                    "record a line (a file holding one JSON array is not)"
                )
            continue
        block = b"".join([*pending, data[: end - 1]]) if pending else data[: end - 1]
        lines += block.count(b"\n") + 1
        yield block
        pending, pending_bytes = ([data[end:]], len(data) - end) if end < len(data) else ([], 0)
    if pending:
        yield b"".join(pending)


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
    when present, else the first two columns (as sentence-transformers does). One column cannot be two."""
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
    elif "negative" in names and "negative" not in (chosen["anchor"], chosen["positive"]):
        chosen["negative"] = "negative"
    if chosen["anchor"] == chosen["positive"]:
        raise InputError(
            f"{where}: column '{chosen['anchor']}' would be both the anchor and the positive; set positive_column "
            f"(columns: {names})"
        )
    for role, column in chosen.items():
        kind = schema.field(column).type
        value = kind.value_type if pa.types.is_list(kind) or pa.types.is_large_list(kind) else kind
        if not (pa.types.is_string(value) or pa.types.is_large_string(value)) or (
            role == "anchor" and value is not kind
        ):
            expected = "strings" if role == "anchor" else "strings or lists of strings"
            raise InputError(f"{where}: column '{column}' ({role}) holds {kind}, expected {expected}")
    return chosen


def read_table(ref: str, builder: PairSink, s: PairSettings, keep: np.ndarray | None, counts: Counter) -> None:
    """Feed every row of a Parquet file or hub dataset (of the sample, when `keep` is given) to the builder.
    A null cell counts as empty."""
    where, table = _load_table_source(ref, s.pairs_revision)
    columns = table_columns(_table_schema(table), s, where)
    counts["shape:table"] = 1
    row = 0
    progress = ProgressBar(
        desc=f"reading {where}", unit=" rows", mininterval=10, unit_scale=True, total=_table_rows(table)
    )
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
