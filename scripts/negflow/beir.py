"""Read BEIR corpus, queries and qrels from local files (plain or .gz) or the Hugging Face hub.

Every problem is raised as an InputError whose message names the file and line (or hub row), so the
user can fix the input before any model runs.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from isal import igzip, isal_zlib

from negflow.errors import InputError
from negflow.refs import is_local_data

# What reading a truncated or corrupt .gz raises (ISA-L's own error is no OSError).
READ_ERRORS = (OSError, EOFError, zlib.error, isal_zlib.error)
UTF8_BOM = b"\xef\xbb\xbf"  # a byte-order mark opening a file is dropped: editors on Windows write one


def open_binary(path: str):
    """A local data file for reading bytes, inflated when it ends in .gz (ISA-L: twice as fast as zlib)."""
    try:
        return igzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as e:  # a folder, no permission
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None


def read_error(path: str, after_line: int, error: Exception) -> InputError:
    """The one line for a file that cannot be read on: a truncated or corrupt .gz, most often."""
    what = "truncated or corrupt gzip data" if path.endswith(".gz") else "cannot read"
    return InputError(f"{path}: after line {after_line}: {what} ({type(error).__name__}: {error})")


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) decoding each line on its own, so a bad byte names its line."""
    line_no = 0
    with open_binary(path) as f:
        lines = iter(f)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except READ_ERRORS as e:
                raise read_error(path, line_no, e) from None
            line_no += 1
            if line_no == 1:
                raw = raw.removeprefix(UTF8_BOM)
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{line_no}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def iter_jsonl(path: str) -> Iterator[tuple[str, dict]]:
    """Yield (location, object) for each non-blank line; location is `path:line`."""
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if "\\ud" in line.lower():  # a \uD800-\uDFFF escape: JSON allows a lone one, UTF-8 cannot hold it
            try:
                json.dumps(obj, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(
                    f"{where}: a lone surrogate escape (\\uD800-\\uDFFF without its pair) is no text"
                ) from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, obj


def _iter_hub(dataset_id: str, config_name: str) -> Iterator[tuple[str, dict]]:
    import datasets

    try:
        rows = datasets.load_dataset(dataset_id, config_name, split=config_name, streaming=True)
    except Exception as e:  # the hub raises many types; the user needs one line
        raise InputError(f"hub dataset {dataset_id} ({config_name}): cannot load ({type(e).__name__}: {e})") from None
    for i, row in enumerate(rows):
        yield f"{dataset_id}[{config_name}] row {i}", row


def iter_parquet(path: str) -> Iterator[tuple[str, dict]]:
    """Yield (location, row) of a Parquet table; location is `path row N` (1-based)."""
    from negflow.files import open_parquet

    try:
        table = open_parquet(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    row = 0
    for batch in table.iter_batches(batch_size=65_536):
        for obj in batch.to_pylist():
            row += 1
            yield f"{path} row {row}", obj


def iter_records(ref: str, hub_config: str) -> Iterator[tuple[str, dict]]:
    """(location, object) of a local JSONL or Parquet file, or of a hub dataset's `hub_config`."""
    if not is_local_data(ref):
        return _iter_hub(ref, hub_config)
    return iter_parquet(ref) if ref.endswith(".parquet") else iter_jsonl(ref)


def _string_field(obj: dict, key: str, where: str, required: bool) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise InputError(f"{where}: missing '{key}'")
        return ""
    value = obj[key]
    if key == "_id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InputError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    return value


@dataclass
class ReadStats:
    """Counts a reader reports to the log."""

    rows: int = 0
    empty: int = 0
    empty_ids: list[str] = field(default_factory=list)


def iter_corpus(ref: str, stats: ReadStats) -> Iterator[tuple[str, str]]:
    """Yield (doc id, text) with the title joined to the text by a space, as sentence-transformers' BEIR
    evaluation does. Documents with no text are skipped and counted; duplicate ids raise."""
    seen: set[str] = set()
    for where, obj in iter_records(ref, "corpus"):
        doc_id = _string_field(obj, "_id", where, required=True)
        text = _string_field(obj, "text", where, required=True)
        title = _string_field(obj, "title", where, required=False)
        if doc_id in seen:
            raise InputError(f"{where}: duplicate document id '{doc_id}'")
        seen.add(doc_id)
        stats.rows += 1
        joined = f"{title} {text}".strip() if title.strip() else text.strip()
        if not joined:
            stats.empty += 1
            stats.empty_ids.append(doc_id)
            continue
        yield doc_id, joined


def iter_queries(ref: str, stats: ReadStats) -> Iterator[tuple[str, str]]:
    """Yield (query id, text); empty queries are skipped and counted, duplicate ids raise."""
    seen: set[str] = set()
    for where, obj in iter_records(ref, "queries"):
        query_id = _string_field(obj, "_id", where, required=True)
        text = _string_field(obj, "text", where, required=True).strip()
        if query_id in seen:
            raise InputError(f"{where}: duplicate query id '{query_id}'")
        seen.add(query_id)
        stats.rows += 1
        if not text:
            stats.empty += 1
            stats.empty_ids.append(query_id)
            continue
        yield query_id, text


QRELS_HEADER = ("query-id", "corpus-id", "score")


def read_qrels(ref: str) -> list[tuple[str, str, int]]:
    """Read (query id, doc id, score) rows. Local files need BEIR's header; CRLF and blank lines are fine."""
    if not is_local_data(ref):
        return _read_hub_qrels(ref)
    if ref.endswith(".parquet"):
        return _read_parquet_qrels(ref)
    rows: list[tuple[str, str, int]] = []
    header_seen = False
    for line_no, line in _lines(ref):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        cols = line.split("\t")
        where = f"{ref}:{line_no}"
        if not header_seen:
            if tuple(c.strip() for c in cols) != QRELS_HEADER:
                raise InputError(f"{where}: expected the header 'query-id<TAB>corpus-id<TAB>score', got {line[:60]!r}")
            header_seen = True
            continue
        if len(cols) != 3:
            raise InputError(f"{where}: expected 3 tab-separated columns, got {len(cols)}")
        query_id, doc_id, score = (c.strip() for c in cols)
        try:
            rows.append((query_id, doc_id, int(score)))
        except ValueError:
            raise InputError(f"{where}: score {score!r} is not an integer") from None
    if not header_seen:
        raise InputError(f"{ref}: empty qrels file (expected a 'query-id corpus-id score' header)")
    return rows


def _read_parquet_qrels(ref: str) -> list[tuple[str, str, int]]:
    """Qrels as a Parquet table with BEIR's column names (what read_pairs writes)."""
    rows = []
    for where, obj in iter_parquet(ref):
        try:
            rows.append((str(obj["query-id"]), str(obj["corpus-id"]), int(obj["score"])))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: expected columns 'query-id', 'corpus-id' and an integer 'score'") from None
    return rows


def _read_hub_qrels(ref: str) -> list[tuple[str, str, int]]:
    import datasets

    dataset_id, _, split = ref.partition(":")
    try:
        table = datasets.load_dataset(dataset_id, split=split or "test")
    except Exception as e:  # the hub raises many types; the user needs one line
        raise InputError(f"hub qrels {ref}: cannot load ({type(e).__name__}: {e})") from None
    return [(str(r["query-id"]), str(r["corpus-id"]), int(r["score"])) for r in table]


def unknown_ids_message(what: str, source: str, ids: list[str]) -> str:
    """One line with the count and the first few offending ids."""
    unique = list(dict.fromkeys(ids))
    first = ", ".join(repr(i) for i in unique[:5])
    more = ", ..." if len(unique) > 5 else ""
    return f"{source}: {len(unique)} {what} not found (first: {first}{more})"
