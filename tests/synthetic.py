"""Synthetic candidates whose false negatives are known, shaped like dense retrieval where positives and
negatives overlap: the calibration's tests measure its estimate against this truth.

Each query has a topic; its relevant documents lie near the topic, its irrelevant ones near the query or
elsewhere, so that query-document cosines of the two kinds overlap and closeness to a positive helps
without deciding. Some irrelevant documents come with near-duplicates (cosine above 0.95), so export's
near-duplicate skipping fires. The miner is shown a random subset of each query's relevant documents
(`shown`); the others, where retrieval puts them among the candidates, are the false negatives.
"""

from __future__ import annotations

import numpy as np

from negflow.candidates import QueryCandidates
from negflow.selection import SelectionSettings, candidate_noise, select_negatives

DIM = 48
CANDIDATES = 100
OTHERS = 400  # irrelevant documents per query before retrieval keeps the top CANDIDATES


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class OverlapCandidates:
    """`queries` queries with `relevant` (a range, drawn per query) relevant documents each; `shown(rng, q)`
    says how many of them the miner sees (at least one). Candidates: the top CANDIDATES by cosine of the
    documents not shown. `false_negatives[q]`: the candidate rows that are relevant."""

    score_name = "cosine"

    def __init__(self, queries: int, relevant: tuple[int, int], shown, seed: int):
        rng = np.random.default_rng(seed)
        self.queries: list[QueryCandidates] = []
        self.false_negatives: dict[int, set[int]] = {}
        doc = 0
        for q in range(queries):
            basis = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0]
            query, topic, rest = basis[:, 0], basis[:, 1], basis[:, 2:]
            n_rel = int(rng.integers(relevant[0], relevant[1] + 1))
            c = np.r_[
                np.clip(rng.normal(0.55, 0.1, n_rel), 0.2, 0.9), np.clip(rng.normal(0.3, 0.12, OTHERS), -0.2, 0.8)
            ]
            topical = rng.random(OTHERS) < 0.3  # irrelevant documents that share the topic, less closely
            rho = np.r_[rng.uniform(0.4, 0.8, n_rel), np.where(topical, rng.uniform(0.2, 0.6, OTHERS), 0.0)]
            noise = _unit(rng.normal(size=(len(c), DIM - 2)) @ rest.T)
            emb = c[:, None] * query + np.sqrt(1 - c**2)[:, None] * (
                rho[:, None] * topic + np.sqrt(1 - rho**2)[:, None] * noise
            )
            dups = n_rel + rng.choice(OTHERS, OTHERS // 20, replace=False)
            half = len(dups) // 2
            emb[dups[:half]] = _unit(emb[dups[half:]] + 0.03 * rng.normal(size=(half, DIM)))
            n_shown = min(n_rel, max(1, shown(rng, q)))
            cos = emb @ query
            is_rel = np.r_[np.ones(n_rel, bool), np.zeros(OTHERS, bool)]
            rows = np.arange(doc, doc + len(emb))
            doc += len(emb)
            shown_at = rng.choice(n_rel, n_shown, replace=False)
            hidden = np.ones(len(emb), bool)
            hidden[shown_at] = False
            order = np.flatnonzero(hidden)[np.argsort(-cos[hidden], kind="stable")][:CANDIDATES]
            self.false_negatives[q] = set(rows[order][is_rel[order]].tolist())
            self.queries.append(
                QueryCandidates(
                    query_row=q,
                    query_id=f"q{q}",
                    pos_rows=rows[shown_at],
                    pos_ids=[f"d{r}" for r in rows[shown_at]],
                    pos_grades=np.ones(n_shown),
                    pos_cos=cos[shown_at],
                    pos_ce=None,
                    cand_rows=rows[order],
                    cand_ids=[f"d{r}" for r in rows[order]],
                    cand_ranks=np.arange(1, len(order) + 1),
                    cand_cos=cos[order],
                    cand_ce=None,
                    cand_emb=emb[order],
                    pos_emb=emb[shown_at],
                    cand_hashes=rows[order].astype(np.int64),
                    pos_hashes=rows[shown_at].astype(np.int64),
                    given_rows=np.zeros(0, dtype=np.int64),
                    given_ids=[],
                    given_cos=np.zeros(0),
                    given_ce=None,
                )
            )

    def __iter__(self):
        return iter(self.queries)

    def iterate(self, only: np.ndarray):
        wanted = set(np.asarray(only).tolist())
        return (q for q in self.queries if q.query_row in wanted)

    def __len__(self) -> int:
        return len(self.queries)

    def positive_counts(self) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(len(self.queries)), np.array([len(q.pos_rows) for q in self.queries])

    def measured(self, s: SelectionSettings) -> tuple[float | None, float | None]:
        """The true false-negative share of a selection as export makes it (every shown positive visible,
        near-duplicates skipped) and its median rank."""
        false, ranks = 0, []
        for q in self.queries:
            noise = candidate_noise(s.seed, q.query_row, q.cand_rows)
            chosen = select_negatives(q.scores("cosine"), s, noise).chosen
            false += sum(int(r) in self.false_negatives[q.query_row] for r in q.cand_rows[chosen])
            ranks += q.cand_ranks[chosen].tolist()
        if not ranks:
            return None, None
        return false / len(ranks), float(np.median(ranks))
