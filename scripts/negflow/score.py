"""Stage 4, score: tokenize each unique (query, document) pair once for the cross-encoder, then score them."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negflow.files import atomic_output, read_parquet

log = logging.getLogger("negflow")


def unique_pairs(candidates: pa.Table, qrels: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(query_row, doc_row) of every candidate and qrels document, each pair once, sorted."""
    q = np.concatenate([candidates["query_row"].to_numpy(), qrels["query_row"].to_numpy()]).astype(np.int64)
    d = np.concatenate([candidates["doc_row"].to_numpy(), qrels["doc_row"].to_numpy()]).astype(np.int64)
    pairs = np.unique(np.stack([q, d], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def prepare_ce_pairs(
    candidates_path: str,
    qrels_path: str,
    corpus_dir: str,
    queries_dir: str,
    ce_ref: str,
    seq_len: int,
    out_dir: str,
    workers: int = 1,
    options=None,
) -> int:
    """Tokenize every unique (query, document) pair for the cross-encoder (in `workers` processes)."""
    from negflow.models import load_cross_encoder, pick_device, tokenize
    from negflow.store import load_table, save_tokenized

    corpus = load_table(corpus_dir, ["text"])["text"]
    queries = load_table(queries_dir, ["text"])["text"]
    query_rows, doc_rows = unique_pairs(read_parquet(candidates_path), read_parquet(qrels_path))
    model = load_cross_encoder(ce_ref, pick_device("cpu"), seq_len, options)
    log.info(
        "%d unique (query, document) pairs; cross-encoder %s, max length %d",
        len(query_rows),
        ce_ref,
        model.max_seq_length,
    )
    pairs = pa.table({"query_row": pa.array(query_rows, pa.int64()), "doc_row": pa.array(doc_rows, pa.int64())})

    def texts(block: pa.RecordBatch) -> list[tuple[str, str]]:
        query_texts = queries.take(block.column("query_row")).to_pylist()
        doc_texts = corpus.take(block.column("doc_row")).to_pylist()
        return list(zip(query_texts, doc_texts, strict=True))

    with atomic_output(out_dir) as tmp:
        encode = functools.partial(tokenize, model)
        save_tokenized(pairs.to_batches(), len(query_rows), texts, encode, tmp, Path(f"{tmp}.tokens"), "pairs", workers)
    return len(query_rows)


SCORES_SCHEMA = pa.schema([("query_row", pa.int32()), ("doc_row", pa.int64()), ("ce_score", pa.float32())])


def score_pairs(
    pairs_dir: str,
    ce_ref: str,
    seq_len: int,
    dtype_setting: str,
    device_setting: str,
    limits,
    out_path: str,
    shard: str = "1-of-1",
    options=None,
    pass_path: str | None = None,
) -> int:
    """Score the pairs of one contiguous shard (`I-of-N`) with the CrossEncoder's own head and activation
    (as `predict` does); the device and precision it ran with go to `pass_path`."""
    from negflow.models import compute_dtype, load_cross_encoder, pick_device, run_model, write_model_pass
    from negflow.shards import parse_shard, shard_range
    from negflow.store import load_extras, load_table, load_tokens

    tokens = load_tokens(pairs_dir)
    part = shard_range(tokens.num_rows, *parse_shard(shard))
    tokens = tokens.slice(part.start, len(part))
    device = pick_device(device_setting)
    dtype = compute_dtype(dtype_setting, device)
    model = load_cross_encoder(ce_ref, device, seq_len, options)
    activation = model.activation_fn
    log.info(
        "scoring pairs %d-%d (shard %s) on %s, dtype %s, activation %s",
        part.start,
        part.stop,
        shard,
        device,
        dtype or "fp32",
        activation,
    )

    def first_score(out):
        return (out if activation is None else activation(out)).reshape(len(out), -1)[:, 0]

    scores = np.empty(len(part), dtype=np.float32)
    extras = load_extras(pairs_dir)
    for idx, out in run_model(model, tokens, extras, "scores", limits, device, dtype, "score", first_score):
        scores[idx] = out
    keys = load_table(pairs_dir, ["query_row", "doc_row"]).slice(part.start, len(part))
    table = pa.table(
        {
            "query_row": keys["query_row"].cast(pa.int32()),
            "doc_row": keys["doc_row"].cast(pa.int64()),
            "ce_score": pa.array(scores, pa.float32()),
        },
        schema=SCORES_SCHEMA,
    )
    with atomic_output(out_path) as tmp:
        pq.write_table(table, str(tmp))
    if pass_path is not None:
        write_model_pass(pass_path, shard, device, dtype)
    return len(part)


def merge_scores(shard_paths: list[str], out_path: str) -> int:
    """Concatenate score shards in pair order."""
    from negflow.shards import in_shard_order

    shard_paths = in_shard_order(shard_paths)
    rows = 0
    with atomic_output(out_path) as tmp, pq.ParquetWriter(str(tmp), SCORES_SCHEMA) as writer:
        for path in shard_paths:
            table = pq.read_table(path, schema=SCORES_SCHEMA)
            writer.write_table(table)
            rows += table.num_rows
    log.info("merged %d score shards: %d pairs", len(shard_paths), rows)
    return rows
