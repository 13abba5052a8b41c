"""selection: auto on synthetic candidates whose false negatives are known."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from negflow.calibration import (
    MIN_LANDED,
    calibrate,
    choose,
    chosen_settings,
    describe,
    grid_settings,
    held_out_positive,
    landing,
    read_choice,
    strictest,
)
from negflow.candidates import QueryCandidates
from negflow.selection import SelectionSettings

DIM = 64
CANDIDATES = 100
NEGATIVES = 8


class SyntheticCandidates:
    """Queries built from known labels: each has `labeled` positives the miner sees and `unlabeled`
    positives hidden among its candidates (the false negatives), scored in the band [0.76, 0.80] like the
    labeled ones, above every true negative (cosines in [0.2, 0.7])."""

    score_name = "cosine"

    def __init__(self, queries: int, labeled: int, unlabeled: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.queries: list[QueryCandidates] = []
        self.false_negatives: dict[int, set[int]] = {}
        doc = 0
        for q in range(queries):
            pos_cos = rng.uniform(0.76, 0.80, labeled)
            cos = np.sort(np.r_[rng.uniform(0.76, 0.80, unlabeled), rng.uniform(0.2, 0.7, CANDIDATES - unlabeled)])[
                ::-1
            ]
            is_fn = np.zeros(CANDIDATES, dtype=bool)
            is_fn[:unlabeled] = True  # the band sits above every negative
            rows = np.arange(doc, doc + CANDIDATES)
            pos_rows = np.arange(doc + CANDIDATES, doc + CANDIDATES + labeled)
            doc += CANDIDATES + labeled
            self.false_negatives[q] = set(rows[is_fn].tolist())
            emb = rng.normal(size=(CANDIDATES + labeled, DIM))
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            self.queries.append(
                QueryCandidates(
                    query_row=q,
                    query_id=f"q{q}",
                    pos_rows=pos_rows,
                    pos_ids=[f"d{r}" for r in pos_rows],
                    pos_grades=np.ones(labeled),
                    pos_cos=pos_cos,
                    pos_ce=None,
                    cand_rows=rows,
                    cand_ids=[f"d{r}" for r in rows],
                    cand_ranks=np.arange(1, CANDIDATES + 1),
                    cand_cos=cos,
                    cand_ce=None,
                    cand_emb=emb[:CANDIDATES],
                    pos_emb=emb[CANDIDATES:],
                    cand_hashes=rows.astype(np.int64),
                    pos_hashes=pos_rows.astype(np.int64),
                    given_rows=np.zeros(0, dtype=np.int64),
                    given_ids=[],
                    given_cos=np.zeros(0),
                    given_ce=None,
                )
            )

    def __iter__(self):
        return iter(self.queries)

    def iterate(self, only: np.ndarray):
        wanted = set(only.tolist())
        return (q for q in self.queries if q.query_row in wanted)

    def __len__(self) -> int:
        return len(self.queries)

    def positive_counts(self) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(len(self.queries)), np.array([len(q.pos_rows) for q in self.queries])

    def measured_share(self, s: SelectionSettings) -> tuple[float, float]:
        """The true false-negative share of a selection with every labeled positive visible, and its
        median rank."""
        from negflow.selection import candidate_noise, select_negatives

        false, total, ranks = 0, 0, []
        for q in self.queries:
            chosen = select_negatives(q.scores("cosine"), s, candidate_noise(s.seed, q.query_row, q.cand_rows)).chosen
            false += sum(int(r) in self.false_negatives[q.query_row] for r in q.cand_rows[chosen])
            total += len(chosen)
            ranks += q.cand_ranks[chosen].tolist()
        return false / total, float(np.median(ranks))


CONFIGURED = SelectionSettings(num_negatives=NEGATIVES)


def test_auto_excludes_the_band_where_false_negatives_sit():
    data = SyntheticCandidates(queries=60, labeled=3, unlabeled=10)
    result = calibrate(data, CONFIGURED, budget=0.05)
    held = result["evidence"][0]
    assert held["landed_among_candidates"] == 60
    # Ten unlabeled positives per query among the candidates, counted from where the held-out ones land.
    assert held["unlabeled_positives"] == pytest.approx(600, rel=0.15)
    unfiltered = result["grid"]["top relative_margin=None positive_doc_margin=None range_min=0"]
    assert unfiltered["fn_share"]["estimate"] > 0.8  # its 8 picks are all in the band
    assert data.measured_share(replace(CONFIGURED, sampling="top", relative_margin=None))[0] == 1.0

    choice = result["choice"]
    assert not choice["fallback"]
    picked = chosen_settings(result, CONFIGURED)
    share, median_rank = data.measured_share(picked)
    assert share == 0.0  # the band is excluded
    assert picked.sampling == "top"
    assert median_rank == 14.5  # the first 8 true negatives (ranks 11-18): nothing harder is clean
    assert result["grid"][choice["name"]]["fn_share"]["interval"][1] <= 0.05
    assert "auto chose top" in describe(result)


def test_auto_takes_the_hardest_setting_when_there_are_no_false_negatives():
    data = SyntheticCandidates(queries=60, labeled=3, unlabeled=0)
    result = calibrate(data, CONFIGURED, budget=0.05)
    assert result["evidence"][0]["unlabeled_positives"] < 1
    picked = chosen_settings(result, CONFIGURED)
    hardest = min(row["median_rank"] for row in result["grid"].values())
    assert result["grid"][result["choice"]["name"]]["median_rank"] == hardest == 4.5
    assert (picked.sampling, picked.range_min) == ("top", 0)


def test_thin_evidence_keeps_the_configured_selection_and_says_why():
    data = SyntheticCandidates(queries=MIN_LANDED - 5, labeled=2, unlabeled=3)
    result = calibrate(data, CONFIGURED, budget=0.05)
    choice = result["choice"]
    assert choice["fallback"] and choice["name"] is None
    assert choice["reason"] == (
        f"thin evidence: {MIN_LANDED - 5} held-out positives landed among the candidates (at least {MIN_LANDED} "
        "needed) and no cross-encoder probabilities; kept the configured selection"
    )
    assert chosen_settings(result, CONFIGURED) == CONFIGURED
    assert describe(result).startswith("auto kept the configured selection (thin evidence")


def test_a_budget_below_what_the_evidence_shows_takes_the_strictest_setting():
    data = SyntheticCandidates(queries=60, labeled=3, unlabeled=10)
    result = calibrate(data, CONFIGURED, budget=0.001)
    choice = result["choice"]
    assert choice["name"] == "random relative_margin=0.1 positive_doc_margin=0.3 range_min=30"
    assert not choice["fallback"] and not choice["within_budget"]
    lowest = min(row["fn_share"]["interval"][1] for row in result["grid"].values())
    assert choice["reason"] == (
        f"no setting's upper bound is within 0.001 (the lowest is {lowest:.3f}): took the strictest setting"
    )
    assert describe(result).startswith("no setting shown within the budget; auto chose random ")
    del result["choice"]["within_budget"]  # a file written before it was recorded reads the same
    assert describe(result).startswith("no setting shown within the budget; auto chose random ")
    assert data.measured_share(chosen_settings(result, CONFIGURED))[0] == 0.0
    # A configured range_max keeps the strictest window inside it, with room for the negatives.
    for range_max in (20, 35):  # 35 - 30 < 8 negatives
        strict = strictest(replace(CONFIGURED, range_max=range_max))
        assert strict == "random relative_margin=0.1 positive_doc_margin=0.3 range_min=10"
        assert strict in grid_settings(replace(CONFIGURED, range_max=range_max))
    assert (
        strictest(replace(CONFIGURED, range_max=9)) == "random relative_margin=0.1 positive_doc_margin=0.3 range_min=0"
    )


def test_only_the_sampled_queries_are_read(monkeypatch):
    import negflow.calibration as calibration

    monkeypatch.setattr(calibration, "MAX_CALIBRATION_QUERIES", 10)
    monkeypatch.setattr(calibration, "MAX_HARDNESS_QUERIES", 5)
    data = SyntheticCandidates(queries=60, labeled=3, unlabeled=0)
    read = []
    iterate = data.iterate
    monkeypatch.setattr(data, "iterate", lambda only: (read.extend(only.tolist()), iterate(only))[1])
    result = calibrate(data, CONFIGURED, budget=0.05)
    assert result["evidence"][0]["queries"] == 10
    assert result["grid"]["top relative_margin=None positive_doc_margin=None range_min=0"]["negatives"] == 5 * 8
    assert 10 <= len(read) <= 15 and read == sorted(set(read))


def test_when_the_strictest_setting_selects_nothing_the_lowest_upper_bound_is_taken():
    def row(upper, rank):
        return {"fn_share": {"estimate": upper / 2, "interval": [0.0, upper]}, "median_rank": rank, "short_queries": 0}

    rows = {"strict": row(0.3, None), "a": row(0.2, 50.0), "b": row(0.1, 70.0)}
    assert choose(rows, 0.05, "strict") == (
        "b",
        False,
        "no setting's upper bound is within 0.05 (the lowest is 0.100): took that one (the strictest selects nothing)",
    )
    assert choose(rows, 0.25, "strict") == (
        "a",
        True,
        "the hardest of 2 settings whose estimate's upper bound is within 0.25",
    )


def test_cross_encoder_probabilities_are_evidence_of_their_own():
    data = SyntheticCandidates(queries=10, labeled=1, unlabeled=4)  # no held-out evidence at all
    for q in data.queries:
        q.cand_ce = np.where(np.isin(q.cand_rows, list(data.false_negatives[q.query_row])), 0.95, 0.02)
    result = calibrate(data, CONFIGURED, budget=0.05)
    assert [e["kind"] for e in result["evidence"]] == ["held-out positives", "cross-encoder probabilities"]
    unfiltered = result["grid"]["top relative_margin=None positive_doc_margin=None range_min=0"]
    assert unfiltered["cross_encoder"]["estimate"] == pytest.approx((4 * 0.95 + 4 * 0.02) / 8)
    assert data.measured_share(chosen_settings(result, CONFIGURED))[0] == 0.0

    for q in data.queries:
        q.cand_ce = q.cand_ce * 10 - 5  # logits: not a probability
    result = calibrate(data, CONFIGURED, budget=0.05)
    assert result["evidence"][1]["unused"].startswith("scores outside [0, 1]")
    assert result["choice"]["fallback"]


def test_landing_chance_by_sampler():
    data = SyntheticCandidates(queries=1, labeled=2, unlabeled=0)
    from negflow.calibration import calibration_pool

    pool = calibration_pool(data.queries[0], 0, "cosine")
    assert pool.held_out == 0  # above every candidate
    plain = replace(CONFIGURED, relative_margin=None, positive_doc_margin=None)
    assert landing(pool, replace(plain, sampling="top"), 8, 42) == (1.0, 8)
    assert landing(pool, replace(plain, sampling="random"), 8, 42) == (8 / 100, 8)
    assert landing(pool, replace(plain, sampling="top", range_min=10), 8, 42) == (0.0, 8)
    chance, _ = landing(pool, replace(plain, sampling="simans"), 8, 42)
    assert 0.0 <= chance <= 1.0


@pytest.mark.slow  # a second Python process
def test_held_out_positive_is_the_same_in_every_process():
    rows = [np.array([5, 9]), np.array([11, 3, 7]), np.array([100, 200, 300, 400])]
    here = [held_out_positive(42, q, r) for q, r in enumerate(rows)]
    code = (
        "import numpy as np; from negflow.calibration import held_out_positive; "
        "rows = [[5, 9], [11, 3, 7], [100, 200, 300, 400]]; "
        "print([held_out_positive(42, q, np.array(r)) for q, r in enumerate(rows)])"
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


def test_read_choice_applies_the_calibration_only_under_auto(tmp_path):
    data = SyntheticCandidates(queries=60, labeled=3, unlabeled=10)
    result = calibrate(data, CONFIGURED, budget=0.05)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(result))
    settings = {"selection": "auto", "num_negatives": NEGATIVES}
    picked, choice = read_choice({"calibration": str(path)}, settings)
    assert picked == chosen_settings(result, CONFIGURED)
    assert choice["name"] == result["choice"]["name"] and choice["summary"] == describe(result)
    assert read_choice({}, settings | {"selection": "fixed"}) == (CONFIGURED, None)


def test_the_grid_keeps_the_configured_window_and_any_seed():
    data = SyntheticCandidates(queries=40, labeled=2, unlabeled=2)
    result = calibrate(data, replace(CONFIGURED, range_max=20, seed=-3), budget=0.05)
    assert len(result["grid"]) == 120  # no grid point starts at rank 30, past range_max 20
    assert all(
        row["settings"]["range_min"] < 20 and row["settings"]["range_max"] == 20 for row in result["grid"].values()
    )
    assert all(row["median_rank"] <= 20 for row in result["grid"].values() if row["median_rank"] is not None)
