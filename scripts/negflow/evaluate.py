"""Retrieval quality (nDCG@10, MRR@10, Recall@100) of an embedding model on a qrels file, by exact search.

Gains follow trec_eval / BEIR: nDCG uses the qrels grade as the gain; MRR and recall count a document as
relevant when its grade reaches `min_positive_score`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negflow.beir import ReadStats, iter_queries, read_qrels, unknown_ids_message
from negflow.errors import InputError
from negflow.files import atomic_output, read_parquet
from negflow.search import exact_top_k
from negflow.store import load_table

log = logging.getLogger("negflow")

CORPUS_CHUNK = 65_536


def read_judgments(ref: str, known_docs: set[str] | dict, known_queries: Iterable[str] | None = None) -> dict:
    """query id -> {doc id: grade}; unknown ids are a one-line error naming the file."""
    rows = read_qrels(ref)
    unknown = [d for _, d, _ in rows if d not in known_docs]
    if unknown:
        raise InputError(unknown_ids_message("corpus ids", ref, unknown))
    if known_queries is not None:
        known_queries = set(known_queries)
        unknown = [q for q, _, _ in rows if q not in known_queries]
        if unknown:
            raise InputError(unknown_ids_message("query ids", ref, unknown))
    judged: dict[str, dict[str, int]] = {}
    for q, d, grade in rows:
        judged.setdefault(q, {})[d] = grade
    return judged


JUDGMENTS_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("doc_id", pa.string()),
        ("score", pa.int32()),
    ]
)


def prepare_judgments(qrels: dict[str, str | None], queries_ref: str, corpus_dir: str, out_path: str) -> dict[str, int]:
    """Check the audit's and finetune's qrels (`qrels`: kind -> qrels reference, None when not configured)
    against the prepared corpus and the queries, and write them with their queries' texts as one table:
    a bad file stops the run right after prepare, not at the end. Returns the rows per kind."""
    doc_ids = set(load_table(corpus_dir, ["id"])["id"].to_pylist())
    texts = dict(iter_queries(queries_ref, ReadStats())) if any(qrels.values()) else {}
    rows = []
    counts = {}
    for kind, ref in qrels.items():
        judged = read_judgments(ref, doc_ids, texts) if ref else {}
        rows += [(kind, q, texts[q], d, grade) for q, grades in judged.items() for d, grade in grades.items()]
        counts[kind] = sum(map(len, judged.values()))
        if ref:
            log.info("%s judgments: %d rows, %d queries from %s", kind, counts[kind], len(judged), ref)
    columns = zip(*rows, strict=True) if rows else [[]] * len(JUDGMENTS_SCHEMA)
    with atomic_output(out_path) as tmp:
        pq.write_table(pa.table(list(map(list, columns)), schema=JUDGMENTS_SCHEMA), tmp)
    return counts


def load_judgments(path: str, kind: str) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """One kind of prepared judgments: query id -> {doc id: grade}, and the judged queries' texts."""
    rows = read_parquet(path).filter(pc.equal(pc.field("kind"), kind)).to_pylist()
    judged: dict[str, dict[str, int]] = {}
    texts = {}
    for row in rows:
        judged.setdefault(row["query_id"], {})[row["doc_id"]] = row["score"]
        texts[row["query_id"]] = row["query"]
    return judged, texts


def ndcg_at(ranked: list[str], grades: dict[str, int], k: int) -> float:
    dcg = sum(grades.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at(ranked: list[str], relevant: set[str], k: int) -> float:
    return next((1.0 / (i + 1) for i, d in enumerate(ranked[:k]) if d in relevant), 0.0)


def recall_at(ranked: list[str], relevant: set[str], k: int) -> float:
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def retrieval_quality(ranked: dict[str, list[str]], judged: dict, min_positive_score: int) -> dict:
    """Mean metrics over the judged queries that have at least one relevant document."""
    per_query = {"ndcg@10": [], "mrr@10": [], "recall@100": []}
    for q, docs in ranked.items():
        grades = judged[q]
        relevant = {d for d, g in grades.items() if g >= min_positive_score}
        if not relevant:
            continue
        per_query["ndcg@10"].append(ndcg_at(docs, grades, 10))
        per_query["mrr@10"].append(mrr_at(docs, relevant, 10))
        per_query["recall@100"].append(recall_at(docs, relevant, 100))
    result = {name: round(float(np.mean(v)), 4) if v else None for name, v in per_query.items()}
    return {"queries": len(per_query["ndcg@10"]), **result}


def embed_texts(model, texts: list[str], prompt: str | None, limits, device, dtype) -> np.ndarray:
    """Unit vectors of `texts` through the same tokenize / length-sorted path the embed stage uses."""
    import pyarrow as pa

    from negflow.embed import unit_vectors
    from negflow.models import run_model, tokenize

    tokens, extras = tokenize(model, texts, prompt)
    out = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    table = pa.table(tokens)
    batches = run_model(model, table, extras, "sentence_embedding", limits, device, dtype, "embed", unit_vectors(model))
    for idx, emb in batches:
        out[idx] = emb
    return out


def evaluate_model(
    model,
    query_texts: dict[str, str],
    judged: dict,
    corpus_chunks: Iterable[np.ndarray],
    doc_ids: list[str],
    query_prompt: str | None,
    min_positive_score: int,
    limits,
    device,
    dtype,
) -> dict:
    """Embed the judged queries, search the corpus exactly, score the top 100."""
    ids = [q for q in judged if q in query_texts]
    q_emb = embed_texts(model, [query_texts[q] for q in ids], query_prompt, limits, device, dtype)
    top = exact_top_k(q_emb, corpus_chunks, 100)
    ranked = {q: [doc_ids[r] for r in row] for q, row in zip(ids, top.tolist(), strict=True)}
    return retrieval_quality(ranked, judged, min_positive_score)
