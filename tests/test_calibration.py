"""selection: auto against synthetic candidates whose false negatives are known (tests/synthetic.py: positives
and negatives overlap, near-duplicates fire)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from synthetic import OverlapCandidates

import negflow.calibration as calibration
from negflow.calibration import (
    MIN_LANDED,
    calibrate,
    choose,
    chosen_settings,
    describe,
    grid_settings,
    held_out_positives,
    out_of_fold,
    read_choice,
)
from negflow.selection import SelectionSettings, candidate_noise, select_negatives

NEGATIVES = 8
CONFIGURED = SelectionSettings(num_negatives=NEGATIVES)
SMALL_GRID = {
    "sampling": ("top", "random"),
    "relative_margin": (None, 0.05),
    "positive_doc_margin": (None, 0.1),
    "range_min": (0, 10),
}


@pytest.fixture
def small_grid(monkeypatch):
    """16 grid settings instead of 180: the same code, a tenth of the selections to replay."""
    monkeypatch.setattr(calibration, "GRID", SMALL_GRID)


def two_shown(rng, q):
    return 2


def errors(data: OverlapCandidates, result: dict) -> list[tuple[float, bool, float]]:
    """Per grid setting: estimate minus measured share, whether the interval holds the measured share, and the
    interval's width."""
    out = []
    for name, s in grid_settings(CONFIGURED).items():
        row = result["grid"][name]
        measured, _ = data.measured(s)
        if row["fn_share"] is not None and measured is not None:
            lo, hi = row["fn_share"]["interval"]
            out.append((row["fn_share"]["estimate"] - measured, lo <= measured <= hi, hi - lo))
    return out


@pytest.mark.slow  # 50 calibrations
def test_the_estimate_tracks_the_truth_over_fifty_seeded_draws(small_grid):
    rows, choices = [], []
    for seed in range(50):
        data = OverlapCandidates(80, (3, 30), two_shown, seed=seed)
        result = calibrate(data, CONFIGURED, budget=0.05)
        rows += errors(data, result)
        name = result["choice"]["name"]
        choices.append(
            (result["grid"][name]["fn_share"]["estimate"], data.measured(grid_settings(CONFIGURED)[name])[0])
        )
    err = np.array([e for e, _, _ in rows])
    coverage = np.mean([c for _, c, _ in rows])
    # Measured at this commit: median |error| 1.3 points, coverage 78% (short of the nominal 90%, see the
    # README), the choice's |error| median 0.7 points, at most 2.6, its measured share at most 5.0%.
    assert np.median(np.abs(err)) <= 0.02
    assert 0.7 <= coverage <= 0.98
    assert np.median([abs(e - m) for e, m in choices]) <= 0.02
    assert max(m for _, m in choices) <= 0.05 + 0.03


def test_evidence_from_a_minority_of_queries_is_applied_to_all(small_grid):
    minority = OverlapCandidates(700, (3, 30), lambda rng, q: 2 if rng.random() < 0.05 else 1, seed=3)
    _, counts = minority.positive_counts()
    assert 0.03 < np.mean(counts >= 2) < 0.07
    result = calibrate(minority, CONFIGURED, budget=0.05)
    held = result["evidence"][0]
    assert held["landed_among_candidates"] >= MIN_LANDED and held["queries"] == np.sum(counts >= 2)
    err = np.array([e for e, _, _ in errors(minority, result)])
    assert np.median(np.abs(err)) <= 0.02  # measured: 1.1 points
    measured, rank = minority.measured(chosen_settings(result, CONFIGURED))
    assert measured <= 0.05 + 0.03
    assert abs(result["grid"][result["choice"]["name"]]["fn_share"]["estimate"] - measured) <= 0.03


def test_the_label_frequency_is_estimated_on_rows_the_model_did_not_see(small_grid, monkeypatch):
    """Review item 1: c was the mean of g over the rows g was fitted on."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2))
    labeled = rng.random(600) < 0.2
    fold = np.arange(600) % calibration.FOLDS
    g = out_of_fold(x, labeled, fold)
    flipped = labeled.copy()
    flipped[fold == 0] = ~flipped[fold == 0]  # other labels in fold 0 leave fold 0's outputs as they were
    assert np.array_equal(out_of_fold(x, flipped, fold)[fold == 0], g[fold == 0])
    assert not np.array_equal(out_of_fold(x, flipped, fold)[fold == 1], g[fold == 1])

    # ... and calibration hands the estimator of c those out-of-fold outputs, not the full fit's.
    produced, received = [], []
    real_out_of_fold, real_estimator = calibration.out_of_fold, calibration.LABEL_FREQUENCY["roc-bound"]
    monkeypatch.setattr(calibration, "out_of_fold", lambda *a: produced.append(real_out_of_fold(*a)) or produced[-1])
    monkeypatch.setitem(
        calibration.LABEL_FREQUENCY, "roc-bound", lambda g, *a: received.append(g) or real_estimator(g, *a)
    )
    calibrate(OverlapCandidates(60, (3, 30), two_shown, seed=1), CONFIGURED, budget=0.05)
    assert len(produced) == 2 and len(received) == 1 + calibration.BOOTSTRAP + 1  # the first fit, then each row
    assert np.array_equal(received[0], produced[0])  # the first fit's
    assert all(np.array_equal(r, np.sort(produced[1])[::-1]) for r in received[1:])  # the reweighted fit's


def test_the_interval_refits_the_classifier_on_every_resample(small_grid, monkeypatch):
    """Review item 2: the bootstrap resampled c but kept one classifier. With c held fixed, the refits
    alone still widen the interval."""
    monkeypatch.setitem(calibration.LABEL_FREQUENCY, "roc-bound", lambda g, labeled, weight: 0.2)
    fits = []
    fit = calibration.logistic_fit
    monkeypatch.setattr(calibration, "logistic_fit", lambda *a, **k: (fits.append(k), fit(*a, **k))[1])
    data = OverlapCandidates(60, (3, 30), two_shown, seed=1)
    refitted = calibrate(data, CONFIGURED, budget=0.05)["grid"]
    refits = [k for k in fits if "start" in k]
    assert len(refits) == calibration.BOOTSTRAP and len({k["weight"].tobytes() for k in refits}) == len(refits)
    monkeypatch.setattr(calibration.PuModel, "refit", lambda model, query_weight: model.w0)
    kept = calibrate(data, CONFIGURED, budget=0.05)["grid"]

    def width(row):
        return row["fn_share"]["interval"][1] - row["fn_share"]["interval"][0]

    assert all(refitted[n]["fn_share"]["estimate"] == kept[n]["fn_share"]["estimate"] for n in kept)
    assert np.mean([width(refitted[n]) - width(kept[n]) for n in kept]) > 0.005


def odd_ranks_are_positives(model, x, w, c):
    """A stand-in posterior: 1 for the candidates at odd 0-based positions in their query's list (read back
    from the log-rank feature), 0 for the others."""
    return (np.rint(np.expm1(x[:, 4])) % 2 == 1).astype(np.float64)


def test_risk_is_measured_on_exports_picks_near_duplicates_included(small_grid, monkeypatch):
    """Review items 3 and 4: `landing` left near-duplicate skipping out, and counted a selected held-out
    positive among the k negatives. The estimate is now the mean posterior over the negatives export itself
    picks, and over nothing else: with a posterior known by position, it is the share of those picks at
    odd positions, exactly."""
    monkeypatch.setattr(calibration.PuModel, "probability", odd_ranks_are_positives)
    data = OverlapCandidates(60, (3, 30), two_shown, seed=2)
    result = calibrate(data, CONFIGURED, budget=0.05)
    skipping_matters = 0
    for name, s in grid_settings(CONFIGURED).items():
        shares = []
        for dups in (s.dup_threshold, None):
            picks = [
                select_negatives(q.scores("cosine"), replace(s, dup_threshold=dups), noise(s, q)).chosen
                for q in data.queries
            ]
            shares.append(np.mean(np.concatenate(picks) % 2 == 1))
        assert result["grid"][name]["held_out"]["estimate"] == pytest.approx(shares[0], abs=5e-5)  # 4 decimals
        assert result["grid"][name]["median_rank"] == data.measured(s)[1]
        skipping_matters += shares[0] != shares[1]
    assert skipping_matters >= 2  # with near-duplicates left in, the estimate would differ


def noise(s: SelectionSettings, q) -> np.ndarray:
    return candidate_noise(s.seed, q.query_row, q.cand_rows)


def test_no_setting_carries_a_floor_of_its_own(small_grid, monkeypatch):
    """Review item 5: half a landing over each setting's own negatives was added to every estimate, so the
    strict settings (fewer negatives) paid the most. With every candidate a positive at the same
    probability, every setting's estimate is that probability, whatever its number of negatives."""
    monkeypatch.setattr(calibration.PuModel, "probability", lambda model, x, w, c: np.full(len(x), 0.03))
    result = calibrate(OverlapCandidates(80, (3, 30), two_shown, seed=2), CONFIGURED, budget=0.05)
    negatives = {row["negatives"] for row in result["grid"].values()}
    assert len(negatives) > 1  # strict settings select fewer
    assert all(row["fn_share"]["estimate"] == pytest.approx(0.03) for row in result["grid"].values())

    nothing_hidden = OverlapCandidates(80, (2, 2), two_shown, seed=4)  # every relevant document shown
    monkeypatch.undo()
    monkeypatch.setattr(calibration, "GRID", SMALL_GRID)
    result = calibrate(nothing_hidden, CONFIGURED, budget=0.02)
    filtered = [
        r for r in result["grid"].values() if r["settings"]["positive_doc_margin"] or r["settings"]["range_min"]
    ]
    assert max(r["fn_share"]["estimate"] for r in filtered) <= 0.01


def test_a_budget_below_what_the_evidence_resolves_takes_the_lowest_upper_bound_and_says_so():
    def row(upper, rank):
        return {"fn_share": {"estimate": upper / 2, "interval": [0.0, upper]}, "median_rank": rank, "short_queries": 0}

    rows = {"strict": row(0.3, None), "a": row(0.2, 50.0), "b": row(0.1, 70.0)}
    assert choose(rows, 0.05) == (
        "b",
        False,
        "the budget 0.05 is below what the evidence resolves: no setting's upper bound is within it; took the "
        "lowest upper bound (0.100)",
    )
    assert choose(rows, 0.25) == ("a", True, "the hardest of 2 settings whose estimate's upper bound is within 0.25")


def test_thin_evidence_keeps_the_configured_selection_and_says_why(small_grid):
    data = OverlapCandidates(6, (3, 30), two_shown, seed=5)
    result = calibrate(data, CONFIGURED, budget=0.05)
    landed = result["evidence"][0]["landed_among_candidates"]
    assert landed < MIN_LANDED
    choice = result["choice"]
    assert choice["fallback"] and choice["name"] is None
    assert choice["reason"] == (
        f"thin evidence: {landed} held-out positives landed among the candidates (at least {MIN_LANDED} needed) "
        "and no cross-encoder; kept the configured selection"
    )
    assert chosen_settings(result, CONFIGURED) == CONFIGURED
    assert describe(result).startswith("auto kept the configured selection (thin evidence")


def with_ce(data: OverlapCandidates, relevant: float, other: float) -> OverlapCandidates:
    for q in data.queries:
        fn = np.isin(q.cand_rows, list(data.false_negatives[q.query_row]))
        q.cand_ce, q.pos_ce = np.where(fn, relevant, other), np.full(len(q.pos_rows), relevant)
    return data


def test_cross_encoder_probabilities_count_once_the_held_out_positives_show_them_calibrated(small_grid):
    calibrated = with_ce(OverlapCandidates(40, (3, 30), two_shown, seed=6), 1.0, 0.0)
    result = calibrate(calibrated, CONFIGURED, budget=0.05)
    ce = result["evidence"][1]
    assert ce["kind"] == "cross-encoder probabilities" and "unused" not in ce
    assert ce["check"]["held_out_mean"] == ce["check"]["calibrated_would_give"] == 1.0
    for name, s in grid_settings(CONFIGURED).items():  # exact: the mean score of export's picks is the truth
        assert result["grid"][name]["cross_encoder"]["estimate"] == pytest.approx(calibrated.measured(s)[0], abs=1e-4)

    overconfident = with_ce(OverlapCandidates(40, (3, 30), two_shown, seed=6), 0.6, 0.3)
    ce = calibrate(overconfident, CONFIGURED, budget=0.05)["evidence"][1]
    assert ce["unused"].startswith("not calibrated on the held-out positives: their mean probability 0.600")
    logits = with_ce(OverlapCandidates(40, (3, 30), two_shown, seed=6), 3.0, -3.0)
    assert calibrate(logits, CONFIGURED, budget=0.05)["evidence"][1]["unused"].startswith("scores outside [0, 1]")
    unchecked = with_ce(OverlapCandidates(20, (1, 1), two_shown, seed=6), 1.0, 0.0)  # one positive: no pool
    result = calibrate(unchecked, CONFIGURED, budget=0.05)
    assert result["evidence"][1]["unused"].startswith("no held-out positive among the candidates")
    assert (
        result["choice"]["fallback"]
        and "cross-encoder scores unused (no held-out positive" in result["choice"]["reason"]
    )


def test_calibrated_probabilities_pass_the_check_when_pools_differ(small_grid):
    """Each pool's held-out positive is checked against that pool's own E[p^2] / E[p]: pooled over pools
    with different scores and sizes (here many relevant candidates at 0.5, few at 0.8), the ratio of sums
    would reject probabilities that are exactly calibrated."""
    data = OverlapCandidates(60, (3, 30), two_shown, seed=6)
    relevant = {q.query_row: np.isin(q.cand_rows, list(data.false_negatives[q.query_row])) for q in data.queries}
    many = np.median([r.sum() for r in relevant.values()])
    for q in data.queries:
        fn = relevant[q.query_row]
        p = 0.5 if fn.sum() >= many else 0.8
        decoys = np.flatnonzero(~fn)[: int(round(fn.sum() * (1 - p) / p))]  # P(relevant | score p) = p
        q.cand_ce = np.where(fn, p, 0.0)
        q.cand_ce[decoys] = p
        q.pos_ce = np.full(len(q.pos_rows), p)
    ce = calibrate(data, CONFIGURED, budget=0.05)["evidence"][1]
    assert "unused" not in ce and ce["check"]["held_out_mean"] == ce["check"]["calibrated_would_give"]


def test_only_the_sampled_queries_are_read(small_grid, monkeypatch):
    monkeypatch.setattr(calibration, "MAX_CALIBRATION_QUERIES", 10)
    monkeypatch.setattr(calibration, "MAX_SAMPLED_QUERIES", 5)
    data = OverlapCandidates(60, (3, 30), two_shown, seed=7)
    read = []
    iterate = data.iterate
    monkeypatch.setattr(data, "iterate", lambda only: (read.extend(only.tolist()), iterate(only))[1])
    result = calibrate(data, CONFIGURED, budget=0.05)
    assert result["evidence"][0]["queries"] == 10
    assert result["grid"]["top relative_margin=None positive_doc_margin=None range_min=0"]["negatives"] == 5 * 8
    assert 10 <= len(read) <= 15 and read == sorted(set(read))


@pytest.mark.slow  # a second Python process
def test_held_out_positives_are_the_same_in_every_process():
    rows = [np.array([5, 9]), np.array([11, 3, 7]), np.array([100, 200, 300, 400, 500, 600])]
    here = [held_out_positives(42, q, r).tolist() for q, r in enumerate(rows)]
    assert [len(h) for h in here] == [2, 3, calibration.HELD_OUT_PER_QUERY]
    code = (
        "import numpy as np; from negflow.calibration import held_out_positives; "
        "rows = [[5, 9], [11, 3, 7], [100, 200, 300, 400, 500, 600]]; "
        "print([held_out_positives(42, q, np.array(r)).tolist() for q, r in enumerate(rows)])"
    )
    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"PYTHONPATH": scripts, "PYTHONHASHSEED": "123"},
    )
    assert json.loads(out.stdout) == here


def test_read_choice_applies_the_calibration_only_under_auto(small_grid, tmp_path):
    data = OverlapCandidates(60, (3, 30), two_shown, seed=8)
    result = calibrate(data, CONFIGURED, budget=0.05)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(result))
    settings = {"selection": "auto", "num_negatives": NEGATIVES}
    picked, choice = read_choice({"calibration": str(path)}, settings)
    assert picked == chosen_settings(result, CONFIGURED) != CONFIGURED
    assert choice["name"] == result["choice"]["name"] and choice["summary"] == describe(result)
    assert read_choice({}, settings | {"selection": "fixed"}) == (CONFIGURED, None)


def test_the_grid_keeps_the_configured_window_and_any_seed():
    data = OverlapCandidates(40, (3, 30), two_shown, seed=9)
    result = calibrate(data, replace(CONFIGURED, range_max=20, seed=-3), budget=0.05)
    assert len(result["grid"]) == 120  # no grid point starts at rank 30, past range_max 20
    assert all(
        row["settings"]["range_min"] < 20 and row["settings"]["range_max"] == 20 for row in result["grid"].values()
    )
    assert all(row["median_rank"] <= 20 for row in result["grid"].values() if row["median_rank"] is not None)
    made_of = result["grid"][result["choice"]["name"]]["held_out_made_of"]
    assert set(made_of) == {"unlabeled_positives_per_query", "chance_selected", "negatives_per_query"}
