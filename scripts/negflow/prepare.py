"""Stage 1: validate corpus, queries and qrels, then tokenize them once for the embedding model.

The corpus streams into an Arrow file in chunks (never a Python list of all texts), so memory stays
bounded by the id index. All validation runs before the model is loaded.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negflow.beir import ReadStats, iter_corpus, iter_queries, read_qrels, unknown_ids_message
from negflow.errors import InputError
from negflow.files import atomic_output
from negflow.store import PreparedManifest, save_tokenized

log = logging.getLogger("negflow")

CHUNK_ROWS = 10_000


@dataclass
class Qrels:
    """Validated qrels restricted to the queries that have at least one positive."""

    query_ids: list[str]
    doc_ids: list[str]
    doc_rows: list[int]
    scores: list[int]
    positive: list[bool]


def stream_corpus(ref: str, arrow_path: Path) -> tuple[dict[str, int], ReadStats]:
    """Write (id, text) rows of the corpus to an Arrow stream file; return id -> row and counts."""
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    stats = ReadStats()
    rows: dict[str, int] = {}
    ids: list[str] = []
    texts: list[str] = []
    with pa.OSFile(str(arrow_path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for doc_id, text in iter_corpus(ref, stats):
            rows[doc_id] = len(rows)
            ids.append(doc_id)
            texts.append(text)
            if len(ids) == CHUNK_ROWS:
                writer.write_batch(pa.record_batch([ids, texts], schema=schema))
                ids, texts = [], []
        if ids:
            writer.write_batch(pa.record_batch([ids, texts], schema=schema))
    if not rows:
        raise InputError(f"{ref}: the corpus has no documents with text")
    return rows, stats


def match_qrels(
    qrels_ref: str,
    rows: list[tuple[str, str, int]],
    query_ids: set[str],
    doc_rows: dict[str, int],
    empty_docs: set[str],
    empty_queries: set[str],
    min_positive_score: int,
) -> tuple[Qrels, dict[str, int]]:
    """Check every qrels id exists; keep rows of queries with a positive. Ids of empty texts are dropped
    (counted), ids found nowhere are an error naming the count and the first ids."""
    unknown_q = [q for q, _, _ in rows if q not in query_ids and q not in empty_queries]
    if unknown_q:
        raise InputError(unknown_ids_message("query ids", qrels_ref, unknown_q))
    unknown_d = [d for _, d, _ in rows if d not in doc_rows and d not in empty_docs]
    if unknown_d:
        raise InputError(unknown_ids_message("corpus ids", qrels_ref, unknown_d))
    counts = {"qrels_rows": len(rows), "dropped_empty_text": 0, "duplicate_rows": 0}
    kept: dict[tuple[str, str], int] = {}
    for q, d, score in rows:
        if q in empty_queries or d in empty_docs:
            counts["dropped_empty_text"] += 1
        elif (q, d) in kept:
            counts["duplicate_rows"] += 1
        else:
            kept[(q, d)] = score
    with_positive = {q for (q, _), s in kept.items() if s >= min_positive_score}
    qrels = Qrels([], [], [], [], [])
    for (q, d), score in kept.items():
        if q in with_positive:
            qrels.query_ids.append(q)
            qrels.doc_ids.append(d)
            qrels.doc_rows.append(doc_rows[d])
            qrels.scores.append(score)
            qrels.positive.append(score >= min_positive_score)
    return qrels, counts


def hold_out_positives(qrels: Qrels, seed: int) -> tuple[Qrels, list[tuple[str, str, int]]]:
    """For each query with several positives keep one top-graded positive (seeded choice) and hide the
    others, so the audit can count how many hidden positives the selection picks as negatives."""
    rng = np.random.default_rng(seed)
    positives: dict[str, list[int]] = {}
    for i, (q, pos) in enumerate(zip(qrels.query_ids, qrels.positive, strict=True)):
        if pos:
            positives.setdefault(q, []).append(i)
    hidden: set[int] = set()
    for rows in positives.values():
        if len(rows) > 1:
            top = max(qrels.scores[i] for i in rows)
            visible = rng.choice([i for i in rows if qrels.scores[i] == top])
            hidden.update(i for i in rows if i != visible)
    keep = [i for i in range(len(qrels.query_ids)) if i not in hidden]
    kept = Qrels(*([getattr(qrels, f.name)[i] for i in keep] for f in fields(Qrels)))
    held = [(qrels.query_ids[i], qrels.doc_ids[i], qrels.scores[i]) for i in sorted(hidden)]
    return kept, held


def write_holdout(rows: list[tuple[str, str, int]], path: str) -> None:
    table = pa.table(
        {
            "query_id": pa.array([r[0] for r in rows], pa.string()),
            "doc_id": pa.array([r[1] for r in rows], pa.string()),
            "score": pa.array([r[2] for r in rows], pa.int32()),
        }
    )
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def write_manifest(
    path: str,
    inputs: dict[str, str],
    query_prompt,
    doc_prompt,
    max_seq_length: int,
    tokenizer_sha256: str,
    pairs_manifest: str | None,
) -> None:
    """The input hashes, the prompts really used and the tokenizer's fingerprint. For a pairs dataset the
    inputs are the pair file and corpus read_pairs read, and its manifest (shape, sample, counts) is quoted
    whole."""
    from negflow.provenance import data_fingerprint

    pairs = json.loads(Path(pairs_manifest).read_text(encoding="utf-8")) if pairs_manifest else None
    PreparedManifest(
        inputs=pairs["inputs"] if pairs else {name: data_fingerprint(ref) for name, ref in inputs.items()},
        pairs={k: v for k, v in pairs.items() if k != "inputs"} if pairs else None,
        query_prompt=query_prompt,
        doc_prompt=doc_prompt,
        embedding_seq_len=max_seq_length,
        tokenizer_sha256=tokenizer_sha256,
    ).write(path)


def prepare(
    corpus: str,
    queries: str,
    qrels: str,
    embedding: str,
    query_prompt: str | None,
    doc_prompt: str | None,
    seq_len: int | None,
    min_positive_score: int,
    audit_holdout: bool,
    seed: int,
    out_corpus: str,
    out_queries: str,
    out_qrels: str,
    out_holdout: str,
    out_manifest: str,
    pairs_manifest: str | None = None,
    workers: int = 1,
    query_prompt_name: str | None = None,
    doc_prompt_name: str | None = None,
    options=None,
) -> dict[str, int]:
    """Validate the three inputs, then write tokenized corpus, tokenized queries and qrels datasets
    (tokenized in `workers` processes: performance only, the output is the same). A prompt is the given
    text, else the model's prompt of the given name, else the model's own "query" / "document" prompt."""
    import datasets

    from negflow.models import load_embedding_model, model_prompt, pick_device, tokenize, tokenizer_sha256

    datasets.disable_caching()
    scratch = Path(out_corpus).parent / f".prepare-scratch-{Path(out_corpus).parent.parent.name}"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        doc_rows, corpus_stats = stream_corpus(corpus, scratch / "corpus.arrow")
        log.info(
            "corpus: %d documents read, %d kept, %d empty skipped", corpus_stats.rows, len(doc_rows), corpus_stats.empty
        )

        query_stats = ReadStats()
        query_list = list(iter_queries(queries, query_stats))
        log.info("queries: %d read, %d empty skipped", query_stats.rows, query_stats.empty)

        qrels_rows = read_qrels(qrels)
        matched, qrels_counts = match_qrels(
            qrels,
            qrels_rows,
            {q for q, _ in query_list},
            doc_rows,
            set(corpus_stats.empty_ids),
            set(query_stats.empty_ids),
            min_positive_score,
        )
        held: list[tuple[str, str, int]] = []
        if audit_holdout:
            matched, held = hold_out_positives(matched, seed)
            log.info("audit hold-out: %d positives of multi-positive queries hidden from the miner", len(held))
        kept_queries = set(matched.query_ids)
        query_list = [(q, t) for q, t in query_list if q in kept_queries]
        if not query_list:
            raise InputError(f"{qrels}: no query has a positive (score >= {min_positive_score}); nothing to mine")
        skipped = query_stats.rows - query_stats.empty - len(query_list)
        log.info(
            "qrels: %d rows, %d positives; %d queries have positives, %d queries without positives skipped; "
            "%d rows dropped for empty texts, %d duplicate rows",
            qrels_counts["qrels_rows"],
            sum(matched.positive),
            len(query_list),
            skipped,
            qrels_counts["dropped_empty_text"],
            qrels_counts["duplicate_rows"],
        )

        device = pick_device("cpu")
        model = load_embedding_model(embedding, device, seq_len, options)
        log.info("tokenizer of %s, max_seq_length %d", embedding, model.max_seq_length)
        doc_prompt = model_prompt(model, embedding, "doc", doc_prompt, doc_prompt_name, "document")
        query_prompt = model_prompt(model, embedding, "query", query_prompt, query_prompt_name, "query")

        qrels_ds = datasets.Dataset.from_dict(
            {
                "query_id": matched.query_ids,
                "doc_id": matched.doc_ids,
                "doc_row": matched.doc_rows,
                "score": matched.scores,
                "positive": matched.positive,
            }
        )
        corpus_batches = pa.ipc.open_stream(pa.memory_map(str(scratch / "corpus.arrow")))
        query_batches = pa.table({"id": [q for q, _ in query_list], "text": [t for _, t in query_list]}).to_batches()
        for batches, n_rows, out, prompt, name in (
            (corpus_batches, len(doc_rows), out_corpus, doc_prompt, "corpus"),
            (query_batches, len(query_list), out_queries, query_prompt, "queries"),
        ):
            with atomic_output(out) as tmp:
                save_tokenized(
                    batches,
                    n_rows,
                    lambda block: block.column("text").to_pylist(),
                    lambda texts, p=prompt: tokenize(model, texts, p),
                    tmp,
                    scratch / f"{name}.tokens",
                    name,
                    workers,
                )
        with atomic_output(out_qrels) as tmp:
            qrels_ds.save_to_disk(str(tmp))
        write_holdout(held, out_holdout)
        write_manifest(
            out_manifest,
            inputs={"corpus": corpus, "queries": queries, "qrels": qrels},
            query_prompt=query_prompt,
            doc_prompt=doc_prompt,
            max_seq_length=model.max_seq_length,
            tokenizer_sha256=tokenizer_sha256(model),
            pairs_manifest=pairs_manifest,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"documents": len(doc_rows), "queries": len(query_list), "qrels": len(matched.query_ids)}
