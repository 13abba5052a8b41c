"""Choose negatives among a query's ranked candidates. Pure functions over score arrays, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def relative_ceiling(positive_scores: np.ndarray, relative_margin: float) -> float:
    """Highest score a negative may have: pos_min - |pos_min| * margin (NV-Retriever's TopK-PercPos,
    written so that it also tightens, not loosens, when scores are negative, e.g. CE logits)."""
    pos_min = float(np.min(positive_scores))
    return pos_min - abs(pos_min) * relative_margin


@dataclass
class Selection:
    """Indices of the chosen candidates (into the query's rank-ordered arrays) and why others went."""

    chosen: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)


def select_negatives(
    candidate_scores: np.ndarray,
    positive_scores: np.ndarray,
    num_negatives: int,
    relative_margin: float | None,
) -> Selection:
    """Drop candidates scoring too close to (or above) the query's weakest positive, then take the
    first `num_negatives` survivors in retrieval-rank order."""
    candidate_scores = np.asarray(candidate_scores, dtype=np.float64)
    keep = np.ones(len(candidate_scores), dtype=bool)
    dropped = {}
    if relative_margin is not None:
        too_close = candidate_scores > relative_ceiling(positive_scores, relative_margin)
        dropped["relative_margin"] = int(too_close.sum())
        keep &= ~too_close
    return Selection(np.flatnonzero(keep)[:num_negatives], dropped)
