"""Stage 6: select negatives per query and write `negatives.jsonl` (negminer's documented schema)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq

from negflow.embed import ShardedEmbeddings
from negflow.files import atomic_output
from negflow.selection import select_negatives

log = logging.getLogger("negflow")

DECIMALS = 6


def group_bounds(sorted_keys: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(key, start, stop) of each run of equal keys in a sorted array."""
    if len(sorted_keys) == 0:
        return
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    stops = np.r_[starts[1:], len(sorted_keys)]
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        yield int(sorted_keys[start]), start, stop


class PairScores:
    """Cross-encoder score lookup by (query_row, doc_row), vectorised with a sorted int64 key."""

    def __init__(self, query_rows: np.ndarray, doc_rows: np.ndarray, scores: np.ndarray, n_docs: int):
        self.n_docs = n_docs
        keys = query_rows.astype(np.int64) * n_docs + doc_rows.astype(np.int64)
        order = np.argsort(keys)
        self.keys, self.scores = keys[order], scores[order]

    def get(self, query_row: int, doc_rows: np.ndarray) -> np.ndarray:
        keys = query_row * self.n_docs + doc_rows.astype(np.int64)
        pos = np.searchsorted(self.keys, keys)
        if np.any(pos >= len(self.keys)) or np.any(self.keys[np.minimum(pos, len(self.keys) - 1)] != keys):
            raise ValueError(f"cross-encoder scores are missing pairs of query row {query_row}; rerun score")
        return self.scores[pos]


def _rounded(values) -> list[float]:
    return [round(float(v), DECIMALS) for v in values]


def export_negatives(
    mined_path: str,
    qrels_path: str,
    corpus_shards: list[str],
    scored_path: str | None,
    settings: dict,
    out_path: str,
) -> dict[str, int]:
    """Write one JSON line per query with positives: its positives, then its selected negatives."""
    mined = pq.read_table(mined_path).sort_by([("query_row", "ascending"), ("rank", "ascending")])
    qrels = pq.read_table(qrels_path)
    corpus = ShardedEmbeddings(corpus_shards)
    score_name = settings["selection_score"]
    if score_name == "auto":
        score_name = "ce" if scored_path else "cosine"
    if score_name == "ce" and not scored_path:
        raise ValueError("selection_score 'ce' needs cross-encoder scores")
    ce = None
    if scored_path:
        scored = pq.read_table(scored_path)
        ce = PairScores(
            scored["query_row"].to_numpy(), scored["doc_row"].to_numpy(), scored["ce_score"].to_numpy(), len(corpus)
        )

    m_query = mined["query_row"].to_numpy()
    m_doc_row = mined["doc_row"].to_numpy()
    m_doc_id = mined["doc_id"].to_pylist()
    m_cos = mined["cosine"].to_numpy()
    m_bounds = {q: (a, b) for q, a, b in group_bounds(m_query)}

    positive = qrels["positive"].to_numpy(zero_copy_only=False)
    pos_table = qrels.filter(positive)
    p_query = pos_table["query_row"].to_numpy()
    order = np.argsort(p_query, kind="stable")  # keeps qrels order within a query
    p_query = p_query[order]
    p_doc_row = pos_table["doc_row"].to_numpy()[order]
    p_doc_id = np.array(pos_table["doc_id"].to_pylist(), dtype=object)[order].tolist()
    p_score = pos_table["score"].to_numpy()[order]
    p_cos = pos_table["cosine"].to_numpy()[order]
    p_query_id = np.array(pos_table["query_id"].to_pylist(), dtype=object)[order].tolist()

    counts: Counter = Counter()
    with atomic_output(out_path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for q, a, b in group_bounds(p_query):
            ma, mb = m_bounds.get(q, (0, 0))
            cand_rows = m_doc_row[ma:mb]
            pos_ce = ce.get(q, p_doc_row[a:b]) if ce else None
            cand_ce = ce.get(q, cand_rows) if ce else None
            cand_scores, pos_scores = (cand_ce, pos_ce) if score_name == "ce" else (m_cos[ma:mb], p_cos[a:b])
            selection = select_negatives(
                cand_scores, pos_scores, settings["num_negatives"], settings["relative_margin"]
            )
            chosen = selection.chosen
            counts["queries"] += 1
            counts["candidates"] += mb - ma
            counts["negatives"] += len(chosen)
            counts["short"] += len(chosen) < settings["num_negatives"]
            for reason, n in selection.dropped.items():
                counts[f"dropped_{reason}"] += n

            doc_rows = np.r_[p_doc_row[a:b], cand_rows[chosen]]
            emb = corpus.take(doc_rows)
            record = {
                "query": p_query_id[a],
                "docs": p_doc_id[a:b] + [m_doc_id[ma + int(i)] for i in chosen],
                "doc_scores": [float(s) for s in p_score[a:b]] + [0.0] * len(chosen),
                "query_doc_cos": _rounded(np.r_[p_cos[a:b], m_cos[ma:mb][chosen]]),
            }
            if ce:
                record["query_doc_ce"] = _rounded(np.r_[pos_ce, cand_ce[chosen]])
            record["doc_doc_cos"] = _rounded((emb @ emb.T).ravel())
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    log.info(
        "selected on %s: %d queries, %d candidates, %d dropped by relative_margin=%s, %d negatives, "
        "%d queries short of %d",
        score_name,
        counts["queries"],
        counts["candidates"],
        counts["dropped_relative_margin"],
        settings["relative_margin"],
        counts["negatives"],
        counts["short"],
        settings["num_negatives"],
    )
    return dict(counts)
