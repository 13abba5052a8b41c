"""Retrieval quality (nDCG@10, MRR@10, Recall@100) of an embedding model on a qrels file, by exact search.

Gains follow trec_eval / BEIR: nDCG uses the qrels grade as the gain; MRR and recall count a document as
relevant when its grade reaches `min_positive_score`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from negflow.search import exact_top_k

CORPUS_CHUNK = 65_536


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
