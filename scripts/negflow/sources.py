"""Candidates from more than one retriever (`candidate_sources`): the sources' names, a run file read as a
source, and the fusion of every source's candidates into the one table selection reads.

A source's table holds, per query in query order, the documents it returned with its own rank and score
(`bm25.SOURCE_SCHEMA`; the dense search's `cosine` is its score). The fused table is the union per query,
ordered by reciprocal rank fusion, RRF(d) = sum over the sources that returned d of 1 / (RRF_K + rank):
ties by the first listed source's rank, then the next's, then corpus row. Its `rank` is that fused rank
(what `range_min`/`range_max` and hardness read) and its `cosine` the run's embedding cosine, exact for
every candidate: the dense search's value where it returned the document, else computed from the
embedding shards, nothing re-embedded. Each source keeps its rank and score (`rank_NAME`, `score_NAME`,
null where it did not return the document)."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negflow.beir import ReadStats, iter_queries
from negflow.bm25 import SOURCE_SCHEMA
from negflow.errors import ConfigError, InputError
from negflow.files import SortedRows, atomic_output, open_parquet
from negflow.progress import ProgressBar
from negflow.search import CANDIDATES_SCHEMA, exact_cosines, per_source, qrels_rows
from negflow.store import ShardedEmbeddings, load_table

log = logging.getLogger("negflow")

DENSE = "dense"
RRF_K = 60  # Cormack, Clarke and Buettcher (2009): the constant their experiments settled on, as in most uses
FUSE_BLOCK = 4_096  # queries fused at once


def source_name(source: str | dict) -> str:
    """The name a source's columns and `doc_sources` carry: `dense`, `bm25`, `run_<file stem>` or
    `model_<the model's last path part>` (letters, digits and '_')."""
    if isinstance(source, str):
        return source
    if "run" in source:
        return "run_" + re.sub(r"[^A-Za-z0-9_]", "_", Path(source["run"]).stem)
    return "model_" + re.sub(r"[^A-Za-z0-9_]", "_", source["model"].rstrip("/").split("/")[-1].split(":")[-1])


# What a `{model: ID}` source's own dataset does not do: it embeds and searches, nothing after.
MODEL_SOURCE_OFF = {
    "candidate_sources": [DENSE],
    "candidates_per_source": None,
    "ce": None,
    "selection": "fixed",
    "audit_qrels": None,
    "finetune_eval_qrels": None,
    "train_formats": [],
    "rounds": 1,  # a second model's candidates are the same in every round: it runs once
}


# A second model's own options, as a `{model: ID}` source gives them; the dataset's are its own model's.
MODEL_OPTIONS = {
    "embedding_revision": None,
    "embedding_model_kwargs": {},
    "truncate_dim": None,
    "query_prompt": None,
    "doc_prompt": None,
    "query_prompt_name": None,
    "doc_prompt_name": None,
}


def model_source_settings(settings: dict, source: dict) -> dict:
    """The settings a `{model: ID}` source runs with: the dataset's data and run settings, that model
    with the options the source gives (the others at their defaults), and nothing after the search."""
    options = {k: v for k, v in source.items() if k != "model"}
    own = {"embedding": source["model"], "candidates": per_source(settings)}  # its search returns its share
    return {**settings, **MODEL_SOURCE_OFF, **MODEL_OPTIONS, **options, **own}


def model_source_dataset(dataset: str, name: str) -> str:
    """The name of the dataset a `{model: ID}` source of `dataset` runs as (its results folder)."""
    return f"{dataset}.{name}"


def model_source_datasets(datasets: dict[str, dict]) -> dict[str, dict]:
    """A dataset of its own (`<dataset>.<source name>`) for every `{model: ID}` source: the dataset's
    settings with that model and its options, so the usual prepare, embed and search rules run it; fusion
    reads its search's candidates. `model_source_of` names the dataset it serves (the run's targets skip it)."""
    derived = {}
    for name, settings in datasets.items():
        for source in settings["candidate_sources"]:
            if isinstance(source, dict) and "model" in source:
                own = model_source_dataset(name, source_name(source))
                if own in datasets:
                    raise ConfigError(
                        f"config: datasets.{own}: the name of dataset {name}'s {source_name(source)} source"
                    )
                derived[own] = model_source_settings(settings, source) | {"model_source_of": name}
    return derived


def source_names(sources: list) -> list[str]:
    return [source_name(s) for s in sources]


def is_fused(sources: list) -> bool:
    """Whether selection reads a fused table: any list but the default `[dense]`, whose run is unchanged."""
    return source_names(sources) != [DENSE]


def rank_column(name: str) -> str:
    return f"rank_{name}"


def score_column(name: str) -> str:
    return f"score_{name}"


def fused_sources(schema: pa.Schema) -> list[str]:
    """The source names of a candidates table, in their listed order; [] for the dense search's own table."""
    return [name[len("rank_") :] for name in schema.names if name.startswith("rank_")]


def _run_lines(path: str):
    """(line number, query id, doc id, rank, score) of a TREC run (`qid Q0 docid rank score tag`, whitespace
    separated) or a JSONL run (`{"query_id", "doc_id", "score"}`, `rank` optional: an integer, or null) line
    by line; a malformed line (bad UTF-8 included) is refused with its file:line."""
    jsonl = Path(path).suffix in (".jsonl", ".json")
    # a byte-order mark is no part of the first query id; bad bytes become surrogates, refused below
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                line.encode("utf-8")  # UnicodeEncodeError on bytes that are not UTF-8
                if jsonl:
                    row = json.loads(line)
                    q, d, score, rank = str(row["query_id"]), str(row["doc_id"]), float(row["score"]), row.get("rank")
                    if rank is None:
                        rank = 0
                    elif isinstance(rank, bool) or not isinstance(rank, int):
                        raise ValueError(f"rank {rank!r} is not an integer")
                    q.encode("utf-8"), d.encode("utf-8")  # a lone surrogate escape is no id
                else:
                    fields = line.split()
                    if len(fields) != 6:
                        raise ValueError(f"{len(fields)} fields, a TREC run line has 6: qid Q0 docid rank score tag")
                    q, d, rank, score = fields[0], fields[2], int(fields[3]), float(fields[4])
                if not -(2**63) <= rank < 2**63:
                    raise ValueError(f"rank {rank} is beyond 64 bits")
            except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
                what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
                raise InputError(f"{path}:{number}: not a run line ({what})") from None
            if score != score:
                raise InputError(f"{path}:{number}: score is NaN")
            yield number, q, d, rank, score


@dataclass
class RunColumns:
    """A run file's lines as columns: each line's number in the file, query id, doc id, rank and score."""

    lines: np.ndarray
    query_ids: pa.Array
    doc_ids: pa.Array
    ranks: np.ndarray
    scores: np.ndarray


RUN_BLOCK_BYTES = 1 << 24  # a run file is read this much at a time


def _nonblank_blocks(path: str):
    """A run file block by block as Arrow strings, no Python object per line (a 50M-line run is a few GB as
    Python strings): each block's non-blank lines, as they are, and their line numbers. Raises
    pa.ArrowInvalid where Arrow cannot split the file (a \x1f inside a line, bad UTF-8): the line reader
    then reads it."""
    import pyarrow.csv as csv

    reader = csv.open_csv(
        path,
        read_options=csv.ReadOptions(column_names=["line"], block_size=RUN_BLOCK_BYTES),
        parse_options=csv.ParseOptions(delimiter="\x1f", quote_char=False, ignore_empty_lines=False),
        convert_options=csv.ConvertOptions(column_types={"line": pa.string()}),
    )
    first = 1
    for batch in reader:
        text = batch.column(0)
        # blank as str.strip() has it (utf8_is_space is str.isspace, false for ""), without a trimmed copy
        blank = pc.or_(pc.utf8_is_space(text), pc.equal(pc.utf8_length(text), 0)).to_numpy(zero_copy_only=False)
        kept = np.flatnonzero(~blank)  # blank lines are skipped, as the line reader skips them
        yield kept + first, text.take(pa.array(kept))
        first += batch.num_rows


def _arrow_columns(path: str) -> RunColumns | None:
    """A TREC or JSONL run's columns read by Arrow block by block (`_trec_block` or `_jsonl_block`); None
    where a block is not plainly well formed or Arrow cannot split the file."""
    read_block = _jsonl_block if Path(path).suffix in (".jsonl", ".json") else _trec_block
    parts = []
    try:
        for numbers, text in _nonblank_blocks(path):
            columns = read_block(text) if len(text) else ([], [], np.zeros(0, np.int64), np.zeros(0))
            if columns is None:
                return None
            parts.append((numbers, *columns))
    except pa.ArrowInvalid:
        return None
    numbers, qids, dids, ranks, scores = zip(*parts, strict=True) if parts else ([], [], [], [], [])
    return RunColumns(
        np.concatenate([np.zeros(0, np.int64), *numbers]),
        pa.chunked_array(qids, pa.string()),
        pa.chunked_array(dids, pa.string()),
        np.concatenate([np.zeros(0, np.int64), *ranks]),
        np.concatenate([np.zeros(0), *scores]),
    )


def _trec_block(text: pa.Array):
    """A block of TREC lines as columns; None when a line is not plainly well formed (a field count other
    than 6, a rank other than decimal digits, a score Arrow does not read, a NaN score)."""
    fields = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(text))
    if (pc.list_value_length(fields).to_numpy(zero_copy_only=False) != 6).any():
        return None
    ranks = pc.list_element(fields, 3)
    if not pc.all(pc.match_substring_regex(ranks, r"^-?[0-9]{1,18}$")).as_py():  # Arrow also reads 0x10
        return None
    try:
        ranks = pc.cast(ranks, pa.int64()).to_numpy()
        scores = pc.cast(pc.list_element(fields, 4), pa.float64()).to_numpy()
    except pa.ArrowInvalid:
        return None
    if np.isnan(scores).any():
        return None
    return pc.list_element(fields, 0), pc.list_element(fields, 2), ranks, scores


JSONL_RUN_SCHEMA = pa.schema(
    [("query_id", pa.string()), ("doc_id", pa.string()), ("rank", pa.int64()), ("score", pa.float64())]
)


def _jsonl_block(text: pa.Array):
    """A block of JSONL lines as columns, parsed by Arrow as one buffer (a row per line); None when a line is
    not plainly one `{"query_id": str, "doc_id": str, "score": number, "rank": int}` (a number for an id, a
    missing, NaN or infinite score, a repeated key, two objects, one split over lines, whitespace json.loads
    refuses). A missing or null rank is 0, as the line reader has it."""
    import pyarrow.json as pj

    text = pc.utf8_trim(text, " \t\r\n")  # the whitespace json.loads allows around a value, no other
    if not pc.all(pc.and_(pc.starts_with(text, "{"), pc.ends_with(text, "}"))).as_py():
        return None  # an object split over lines has a line that does not close it (and then counts below)
    joined = pc.binary_join_element_wise(text, "", "\n")  # each line and its newline, end to end
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset : joined.offset + len(joined) + 1]
    buffer = joined.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    options = pj.ParseOptions(explicit_schema=JSONL_RUN_SCHEMA, unexpected_field_behavior="ignore")
    try:
        table = pj.read_json(pa.BufferReader(buffer), parse_options=options).combine_chunks()
    except pa.ArrowInvalid:
        return None
    if table.num_rows != len(text) or any(table[c].null_count for c in ("query_id", "doc_id", "score")):
        return None
    scores = table["score"].to_numpy()
    if not np.isfinite(scores).all():  # NaN is refused, and a number beyond float64 Python reads otherwise
        return None
    ranks = pc.fill_null(table["rank"], 0).to_numpy()
    return table["query_id"].chunk(0), table["doc_id"].chunk(0), ranks, scores


def run_columns(path: str) -> RunColumns:
    """A TREC or JSONL run file's lines as columns (read by Arrow where every line is well formed, else line by
    line), or the file:line of its first malformed line."""
    columns = _arrow_columns(path)
    if columns is not None:
        return columns
    lines, qids, dids, ranks, scores = [], [], [], [], []
    for number, q, d, rank, score in _run_lines(path):
        lines.append(number)
        qids.append(q)
        dids.append(d)
        ranks.append(rank)
        scores.append(score)
    return RunColumns(
        np.array(lines, dtype=np.int64),
        pa.array(qids, pa.string()),
        pa.array(dids, pa.string()),
        np.array(ranks, dtype=np.int64),
        np.array(scores, dtype=np.float64),
    )


def read_run(
    path: str,
    queries_dir: str,
    corpus_dir: str,
    qrels_dir: str,
    candidates: int,
    out_path: str,
    queries_ref: str | None = None,
) -> dict[str, int]:
    """A run file a user already has, as a candidate source: per query its `candidates` best documents by
    score (ties by the file's rank, then corpus row), the query's qrels documents left out as every source
    does. Lines of a query the dataset holds (`queries_ref`, its queries file) but does not mine (no
    positive) are skipped and counted; a query or document the dataset does not hold is refused with the
    file:line that names it, before anything is written."""
    run = run_columns(path)
    query_ids = load_table(queries_dir, ["id"])["id"]
    doc_ids = load_table(corpus_dir, ["id"])["id"]
    q_rows = pc.index_in(run.query_ids, value_set=query_ids).to_numpy(zero_copy_only=False)
    d_rows = pc.index_in(run.doc_ids, value_set=doc_ids).to_numpy(zero_copy_only=False)
    not_mined = np.zeros(len(run.lines), dtype=bool)
    if q_rows.dtype.kind == "f" and queries_ref is not None:
        held = pa.array([q for q, _ in iter_queries(queries_ref, ReadStats())], pa.string())
        not_mined = np.isnan(q_rows) & pc.is_in(run.query_ids, value_set=held).to_numpy(zero_copy_only=False)
    for rows, ids, what in ((q_rows, run.query_ids, "query"), (d_rows, run.doc_ids, "document")):
        unknown = np.flatnonzero(np.isnan(rows) & ~not_mined) if rows.dtype.kind == "f" else np.array([], dtype=int)
        if len(unknown):
            i = int(unknown[0])
            raise InputError(
                f"{path}:{run.lines[i]}: {what} {ids[i].as_py()!r} is not in the dataset's {what} table "
                f"({len(unknown)} lines name an unknown {what})"
            )
    mined = ~not_mined
    q_rows, d_rows = q_rows[mined].astype(np.int64), d_rows[mined].astype(np.int64)
    scores_arr = run.scores[mined]
    ranks_arr = run.ranks[mined]
    judged_q, judged_d, _ = qrels_rows(qrels_dir, query_ids.to_pylist())
    keep = ~np.isin(q_rows * len(doc_ids) + d_rows, judged_q * len(doc_ids) + judged_d)
    # one line per (query, document): a repeated pair keeps its best score
    order = np.lexsort((d_rows, ranks_arr, -scores_arr, q_rows))
    order = order[keep[order]]
    pair = q_rows[order] * len(doc_ids) + d_rows[order]
    _, first = np.unique(pair, return_index=True)
    order = order[np.sort(first)]
    q_sorted = q_rows[order]
    starts = np.searchsorted(q_sorted, q_sorted, side="left")
    rank = np.arange(len(order)) - starts + 1
    order, rank = order[rank <= candidates], rank[rank <= candidates]
    table = pa.table(
        {
            "query_id": query_ids.take(q_rows[order]),
            "doc_id": doc_ids.take(d_rows[order]),
            "query_row": pa.array(q_rows[order], pa.int32()),
            "doc_row": pa.array(d_rows[order], pa.int64()),
            "rank": pa.array(rank, pa.int32()),
            "score": pa.array(scores_arr[order], pa.float32()),
        },
        schema=SOURCE_SCHEMA,
    )
    with atomic_output(out_path) as tmp:
        pq.write_table(table, str(tmp))
    counts = {
        "lines": len(run.lines),
        "lines_of_queries_not_mined": int(not_mined.sum()),
        "queries": len(np.unique(q_sorted)),
        "candidates": table.num_rows,
        "dropped_qrels_documents": int((~keep).sum()),
    }
    log.info("run %s: %s", path, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def fused_schema(names: list[str]) -> pa.Schema:
    fields = [*CANDIDATES_SCHEMA, pa.field("rrf", pa.float64())]
    for name in names:
        fields += [pa.field(rank_column(name), pa.int32()), pa.field(score_column(name), pa.float32())]
    return pa.schema(fields)


SCORE = 5  # the score's column in a source's table as fusion reads it: `score`, or an embedding search's `cosine`


def score_of(path: str) -> str:
    """A source table's score column: `cosine` for an embedding model's search, else `score`."""
    return "cosine" if "cosine" in open_parquet(path).schema_arrow.names else "score"


def check_rows(name: str, part: pa.Table, doc_ids: pa.Array, query_ids: pa.Array) -> None:
    """A source's rows must be the run's own (a second model's prepare numbers the same files the same way):
    their ids at those rows, or the run stops before fusing documents by the wrong number."""
    same = [
        pc.max(part[row]).as_py() < len(ids) and pc.all(pc.equal(ids.take(part[row]), part[id_column])).as_py()
        for ids, row, id_column in ((doc_ids, "doc_row", "doc_id"), (query_ids, "query_row", "query_id"))
        if part.num_rows
    ]
    if not all(same):
        raise ValueError(f"source {name}: its corpus or query rows are not the run's; rerun its prepare")


def fuse_candidates(
    source_paths: dict[str, str],
    corpus_shards: list[str],
    query_shards: list[str],
    corpus_dir: str,
    queries_dir: str,
    out_path: str,
) -> dict[str, int]:
    """The union of every source's candidates per query, ranked by reciprocal rank fusion (module
    docstring), with the exact embedding cosine of each; `source_paths` in the configured order. Every
    source's (row, id) pairs are checked against the run's prepared corpus and queries."""
    names = list(source_paths)
    corpus, queries = ShardedEmbeddings(corpus_shards), ShardedEmbeddings(query_shards)
    readers = {
        name: SortedRows(path, "query_row", [*SOURCE_SCHEMA.names[:SCORE], score_of(path)])
        for name, path in source_paths.items()
    }
    doc_ids, query_ids = load_table(corpus_dir, ["id"])["id"], load_table(queries_dir, ["id"])["id"]
    schema = fused_schema(names)
    counts = {"candidates": 0, "computed_cosines": 0} | {f"from_{name}": 0 for name in names}
    with (
        atomic_output(out_path) as tmp,
        pq.ParquetWriter(str(tmp), schema) as writer,
        ProgressBar(total=len(queries), desc="fuse", unit=" queries", mininterval=5) as bar,
    ):
        for start in range(0, len(queries), FUSE_BLOCK):
            stop = min(start + FUSE_BLOCK, len(queries))
            parts = [readers[name].below(stop) for name in names]
            for name, part in zip(names, parts, strict=True):
                check_rows(name, part, doc_ids, query_ids)
            writer.write_table(_fuse_block(names, parts, corpus, queries, schema, counts))
            bar.update(stop - start)
    log.info("fused %s: %s", " + ".join(names), ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def _fuse_block(names, parts, corpus, queries, schema, counts) -> pa.Table:
    """One block of queries: every source's rows there, merged per (query, document)."""
    q = np.concatenate([p["query_row"].to_numpy().astype(np.int64) for p in parts])
    d = np.concatenate([p["doc_row"].to_numpy() for p in parts])
    src = np.concatenate([np.full(p.num_rows, i, dtype=np.int64) for i, p in enumerate(parts)])
    rank = np.concatenate([p["rank"].to_numpy().astype(np.int64) for p in parts])
    score = np.concatenate([p.column(SCORE).to_numpy().astype(np.float32) for p in parts])
    query_id = pa.chunked_array([c for p in parts for c in p["query_id"].chunks], pa.string())
    doc_id = pa.chunked_array([c for p in parts for c in p["doc_id"].chunks], pa.string())
    order = np.lexsort((src, d, q))
    q, d, src, rank, score = q[order], d[order], src[order], rank[order], score[order]
    new = np.r_[True, (q[1:] != q[:-1]) | (d[1:] != d[:-1])] if len(q) else np.zeros(0, dtype=bool)
    pair = np.cumsum(new) - 1  # each row's (query, document) pair
    n = int(new.sum())
    ranks = np.full((len(names), n), -1, dtype=np.int64)
    scores = np.full((len(names), n), np.nan, dtype=np.float32)
    ranks[src, pair], scores[src, pair] = rank, score
    returned = ranks >= 0
    # summed smallest first: the same float for the same ranks whichever sources gave them, so ties stay ties
    rrf = np.sort(np.where(returned, 1.0 / (RRF_K + np.where(returned, ranks, 0)), 0.0), axis=0).sum(axis=0)
    uq, ud = q[new], d[new]
    first = order[new]  # a row of each pair in the block's concatenation, for its ids
    cosine = np.full(n, np.nan, dtype=np.float32)
    if DENSE in names:
        i = names.index(DENSE)
        cosine[returned[i]] = scores[i][returned[i]]
    missing = np.flatnonzero(np.isnan(cosine))
    if len(missing):
        cosine[missing] = exact_cosines(queries.take(uq[missing]), corpus.take(ud[missing]))
    counts["computed_cosines"] += len(missing)
    big = np.iinfo(np.int64).max
    keys = [ud] + [np.where(returned[i], ranks[i], big) for i in reversed(range(len(names)))] + [-rrf, uq]
    fused = np.lexsort(keys)
    uq_sorted = uq[fused]
    fused_rank = np.arange(n) - np.searchsorted(uq_sorted, uq_sorted, side="left") + 1
    columns = {
        "query_id": query_id.take(pa.array(first[fused])),
        "doc_id": doc_id.take(pa.array(first[fused])),
        "query_row": pa.array(uq_sorted, pa.int32()),
        "doc_row": pa.array(ud[fused], pa.int64()),
        "rank": pa.array(fused_rank, pa.int32()),
        "cosine": pa.array(cosine[fused], pa.float32()),
        "rrf": pa.array(rrf[fused], pa.float64()),
    }
    for i, name in enumerate(names):
        got = returned[i][fused]
        columns[rank_column(name)] = pa.array(ranks[i][fused], pa.int32(), mask=~got)
        columns[score_column(name)] = pa.array(scores[i][fused], pa.float32(), mask=~got)
        counts[f"from_{name}"] += int(got.sum())
    counts["candidates"] += n
    return pa.table(columns, schema=schema)
