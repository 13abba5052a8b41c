"""Positive-aware selection on hand-made score tables, with exact expected picks."""

import numpy as np
import pytest

from negflow.selection import relative_ceiling, select_negatives


def test_ceiling_is_95_percent_of_the_lowest_positive():
    assert relative_ceiling(np.array([0.9, 0.8]), 0.05) == pytest.approx(0.76)


def test_ceiling_tightens_for_negative_scores():
    assert relative_ceiling(np.array([-2.0]), 0.05) == pytest.approx(-2.1)


def test_drops_candidates_above_the_ceiling_then_takes_rank_order():
    sel = select_negatives(np.array([0.9, 0.78, 0.7, 0.76, 0.5, 0.4]), np.array([0.8]), 2, 0.05)
    assert sel.chosen.tolist() == [2, 3]
    assert sel.dropped == {"relative_margin": 2}


def test_negative_scores_such_as_ce_logits():
    sel = select_negatives(np.array([-1.0, -2.05, -2.2, -3.0]), np.array([-2.0, 1.5]), 8, 0.05)
    assert sel.chosen.tolist() == [2, 3]
    assert sel.dropped == {"relative_margin": 2}


def test_no_margin_takes_the_top_candidates():
    sel = select_negatives(np.array([0.99, 0.98, 0.5]), np.array([0.1]), 2, None)
    assert sel.chosen.tolist() == [0, 1]
    assert sel.dropped == {}


def test_short_query_keeps_what_survives():
    sel = select_negatives(np.array([0.95, 0.3]), np.array([0.9]), 5, 0.05)
    assert sel.chosen.tolist() == [1]
