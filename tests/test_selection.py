"""Every filter and sampler on small hand-made score tables, with exact expected picks."""

from collections import Counter

import numpy as np
import pytest

from negflow.selection import QueryScores, SelectionSettings, candidate_noise, relative_ceiling, select_negatives

# Only what a test turns on: no margins, no duplicate checks, rank order.
PLAIN = dict(relative_margin=None, positive_doc_margin=None, dup_threshold=None, sampling="top")


def pick(query, seed=0, **settings):
    s = SelectionSettings(**{**PLAIN, **settings})
    return select_negatives(query, s, np.random.default_rng(seed).random(len(query)))


def q(scores, positives=(0.8,), **extra):
    return QueryScores(np.array(scores, dtype=float), np.array(positives, dtype=float), **extra)


def test_relative_ceiling_is_a_share_of_the_lowest_positive_and_tightens_for_negative_scores():
    assert relative_ceiling(0.8, 0.05) == pytest.approx(0.76)
    assert relative_ceiling(-2.0, 0.05) == pytest.approx(-2.1)


def test_top_takes_rank_order():
    sel = pick(q([0.9, 0.7, 0.6, 0.5]), num_negatives=2)
    assert sel.chosen.tolist() == [0, 1]
    assert sel.dropped == {}


def test_window_uses_raw_retrieval_rank():
    sel = pick(q([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), num_negatives=8, range_min=1, range_max=4)
    assert sel.chosen.tolist() == [1, 2, 3]
    assert sel.dropped["window"] == 3


def test_window_with_explicit_ranks():
    sel = pick(q([0.9, 0.8, 0.7], ranks=np.array([5, 10, 20])), num_negatives=8, range_min=10, range_max=20)
    assert sel.chosen.tolist() == [1]


def test_max_and_min_score():
    sel = pick(q([0.95, 0.85, 0.6, 0.3, 0.1]), num_negatives=8, max_score=0.9, min_score=0.2)
    assert sel.chosen.tolist() == [1, 2, 3]
    assert sel.dropped["max_score"] == 1 and sel.dropped["min_score"] == 1


def test_absolute_margin_is_below_the_lowest_positive():
    # positives 0.9 and 0.8: ceiling 0.8 - 0.1 = 0.7
    sel = pick(q([0.85, 0.75, 0.7, 0.65], positives=(0.9, 0.8)), num_negatives=8, absolute_margin=0.1)
    assert sel.chosen.tolist() == [2, 3]
    assert sel.dropped["absolute_margin"] == 2


def test_relative_margin():
    sel = pick(q([0.9, 0.78, 0.7, 0.76, 0.5]), num_negatives=2, relative_margin=0.05)
    assert sel.chosen.tolist() == [2, 3]
    assert sel.dropped["relative_margin"] == 2


def test_relative_margin_on_negative_scores_such_as_ce_logits():
    sel = pick(q([-1.0, -2.05, -2.2, -3.0], positives=(-2.0, 1.5)), num_negatives=8, relative_margin=0.05)
    assert sel.chosen.tolist() == [2, 3]


def test_ce_max_filters_on_the_cross_encoder_score_whatever_the_selection_score():
    query = q([0.5, 0.4, 0.3], ce_scores=np.array([0.95, 0.05, 0.2]))
    sel = pick(query, num_negatives=8, ce_max=0.1)
    assert sel.chosen.tolist() == [1]
    assert sel.dropped["ce_max"] == 2


def test_positive_doc_margin_drops_candidates_closer_to_a_positive_than_the_query_is():
    # two positives with query cosines 0.6 and 0.5; margin 0.1 -> ceilings 0.54 and 0.45
    positive_cos = np.array([[0.55, 0.1], [0.5, 0.1], [0.2, 0.46], [0.2, 0.3]])
    query = q([0.5, 0.45, 0.4, 0.35], positive_cos=positive_cos, positive_query_cos=np.array([0.6, 0.5]))
    sel = pick(query, num_negatives=8, positive_doc_margin=0.1)
    assert sel.chosen.tolist() == [1, 3]
    assert sel.dropped["positive_doc_margin"] == 2


def test_exact_text_duplicates_of_a_positive_always_go():
    query = q([0.5, 0.4], same_text=np.array([True, False]))
    sel = pick(query, num_negatives=8)
    assert sel.chosen.tolist() == [1]
    assert sel.dropped["same_text_as_positive"] == 1


def test_near_duplicates_of_positives_and_of_kept_negatives():
    positive_cos = np.array([[0.97], [0.5], [0.4], [0.3]])
    candidate_cos = np.array(
        [
            [1.0, 0.2, 0.2, 0.2],
            [0.2, 1.0, 0.96, 0.5],  # 2 repeats 1, which is kept first
            [0.2, 0.96, 1.0, 0.5],
            [0.2, 0.5, 0.5, 1.0],
        ]
    )
    query = q([0.6, 0.5, 0.4, 0.3], positive_cos=positive_cos, candidate_cos=candidate_cos)
    sel = pick(query, num_negatives=8, dup_threshold=0.95)
    assert sel.chosen.tolist() == [1, 3]
    assert sel.dropped["duplicate_of_positive"] == 1
    assert sel.dropped["duplicate_of_negative"] == 1


def test_filters_count_each_candidate_once_in_order():
    # 0.95 breaks both max_score and the margin: only max_score (earlier) counts it
    sel = pick(q([0.95, 0.79, 0.5]), num_negatives=8, max_score=0.9, relative_margin=0.05)
    assert sel.dropped["max_score"] == 1 and sel.dropped["relative_margin"] == 1
    assert sel.chosen.tolist() == [2]
    assert sel.eligible == 1


def test_random_is_seeded_uniform_and_returns_rank_order():
    query = q([0.96, 0.9, 0.7, 0.6, 0.5, 0.4, 0.3], positives=(1.0,))
    first = pick(query, seed=7, num_negatives=3, sampling="random", relative_margin=0.05)
    assert (
        first.chosen.tolist()
        == pick(query, seed=7, num_negatives=3, sampling="random", relative_margin=0.05).chosen.tolist()
    )
    assert first.chosen.tolist() == sorted(first.chosen.tolist())
    counts = Counter()
    for seed in range(600):
        chosen = pick(query, seed=seed, num_negatives=3, sampling="random", relative_margin=0.05).chosen
        counts.update(chosen.tolist())
    # 0.96 is above the ceiling 0.95; the other six are each picked about half of the time (3 of 6)
    assert set(counts) == set(range(1, 7))
    assert all(250 < c < 350 for c in counts.values())


def test_random_takes_all_survivors_when_short():
    sel = pick(q([0.9, 0.5, 0.4]), seed=3, num_negatives=5, sampling="random", relative_margin=0.05)
    assert sel.chosen.tolist() == [1, 2]


def test_simans_prefers_scores_just_below_the_positive():
    # positive 0.8, b = -0.1: target 0.7. With a large `a` the order is fixed by distance to the target.
    query = q([0.79, 0.72, 0.69, 0.5, 0.2], positives=(0.8,))
    for seed in range(20):
        sel = pick(query, seed=seed, num_negatives=2, sampling="simans", simans_a=1e4, simans_b=-0.1)
        assert sel.chosen.tolist() == [1, 2]
    sel = pick(query, seed=0, num_negatives=3, sampling="simans", simans_a=1e4, simans_b=-0.1)
    assert sel.chosen.tolist() == [0, 1, 2]


def test_simans_with_moderate_a_samples_by_weight():
    query = q([0.7, 0.4, 0.1], positives=(0.8,))
    counts = Counter()
    for seed in range(1000):
        counts.update(
            pick(query, seed=seed, num_negatives=1, sampling="simans", simans_a=10, simans_b=-0.1).chosen.tolist()
        )
    weights = np.exp(-10 * (np.array([0.7, 0.4, 0.1]) - 0.7) ** 2)
    expected = 1000 * weights / weights.sum()  # [0.67, 0.27, 0.04] of draws
    assert all(abs(counts[i] - expected[i]) < 45 for i in range(3))


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="sampling"):
        SelectionSettings(sampling="best")
    with pytest.raises(ValueError, match="range_max"):
        SelectionSettings(range_min=10, range_max=10)


def test_defaults_match_the_schema():
    from conftest import REPO

    from negflow.config import load_schema, setting_defaults

    defaults = setting_defaults(load_schema(REPO / "config" / "schema.yaml"))
    s = SelectionSettings.from_settings(defaults)
    assert s == SelectionSettings()


def test_candidate_noise_is_keyed_by_seed_query_and_document():
    rows = np.arange(100_000)
    u = candidate_noise(42, 3, rows)
    assert u.min() > 0 and u.max() < 1
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts - 10_000) < 500)  # 5 sigma of a binomial(100k, 0.1) is 474
    # a document's value does not depend on the other documents in the list
    assert candidate_noise(42, 3, np.array([77, 5]))[0] == u[77]
    assert candidate_noise(42, 3, np.array([5]))[0] == u[5]
    # other seeds and other queries draw independently
    for other in (candidate_noise(43, 3, rows), candidate_noise(42, 4, rows)):
        assert abs(np.corrcoef(u, other)[0, 1]) < 0.02
    assert np.array_equal(candidate_noise(-1, 0, rows[:5]), candidate_noise(2**64 - 1, 0, rows[:5]))


def test_random_picks_move_only_where_the_candidate_list_changes():
    """A candidate that leaves the eligible set (e.g. its score crossed the margin under another precision)
    changes at most the one pick it held; a shuffle of the list would redraw all of them."""
    rng = np.random.default_rng(0)
    scores = np.sort(rng.uniform(0.1, 0.7, 100))[::-1]
    doc_rows = rng.choice(5000, 100, replace=False)
    s = SelectionSettings(**{**PLAIN, "sampling": "random", "num_negatives": 8, "max_score": 0.69})
    noise = candidate_noise(7, 1, doc_rows)
    before = set(doc_rows[select_negatives(q(scores), s, noise).chosen])
    for gone in range(100):
        shifted = scores.copy()
        shifted[gone] = 0.695  # now above max_score: filtered out
        after = set(doc_rows[select_negatives(q(shifted), s, noise).chosen])
        assert len(before - after) == (1 if doc_rows[gone] in before and scores[gone] <= 0.69 else 0)


def test_a_selection_without_negatives_warns_naming_the_filters_that_dropped_them():
    from negflow.selection import no_negatives_warning

    report = {
        "counts": {"queries": 16, "candidates": 1600, "negatives": 0, "given_negatives": 0},
        "dropped": {"same_text_as_positive": 0, "relative_margin": 100, "max_score": 1500},
    }
    warning = no_negatives_warning(report)
    assert warning.startswith("no negative survived selection: of 1,600 candidates of 16 queries")
    assert "max_score dropped 1,500, relative_margin dropped 100;" in warning
    assert "same_text" not in warning
    assert no_negatives_warning({**report, "counts": {**report["counts"], "negatives": 1}}) is None
    assert no_negatives_warning({**report, "counts": {**report["counts"], "given_negatives": 2}}) is None


def test_select_query_counts_given_negatives_and_applies_the_short_query_policy():
    from negflow.selection import select_query

    query = QueryScores(scores=np.array([0.5, 0.4, 0.3]), positive_scores=np.array([0.9]))
    noise = np.zeros(3)
    calls = []

    def pad(selection, s):
        calls.append((selection.chosen.tolist(), s.num_negatives))
        return [(99, 0.1)]

    full = select_query(query, SelectionSettings(num_negatives=3, sampling="top"), noise, given=1, pad=pad)
    assert full.chosen.tolist() == [0, 1] and not full.short and full.written and full.padded == []
    for policy, written, padded in (("keep", True, []), ("drop", False, []), ("pad", True, [(99, 0.1)])):
        s = SelectionSettings(num_negatives=5, sampling="top", short_queries=policy)
        picked = select_query(query, s, noise, given=1, pad=pad)
        assert picked.chosen.tolist() == [0, 1, 2] and picked.short
        assert (picked.written, picked.padded) == (written, padded)
    assert calls == [([0, 1, 2], 4)]  # padding sees the room the given negative leaves
