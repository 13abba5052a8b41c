"""Rule calibrate_selection (`selection: auto`): estimate, on the run's own candidates, the share of false
negatives each setting of a fixed grid would select and how hard its negatives are, and choose the hardest
setting whose estimate, at the upper end of its interval, stays within `fn_budget`.

Evidence (each gives, per setting, an estimate with a 90% bootstrap interval over queries):

- **held-out positives.** Each query with two or more positives hides up to HELD_OUT_PER_QUERY of them, one
  at a time (seeded, `held_out_positives`): a pool is its candidates with that positive put back at its
  cosine rank. From the pools, positive-unlabeled (PU) learning gives each candidate's probability of being
  a positive nobody labeled: a logistic model g tells the held-out positives from the other pool members on
  PU features (`pu_features`: score against the positives, closeness to the nearest positive, rank, and
  their squares), and the label frequency c (the share of the pools' positives that are held out) turns
  g into pi = min(1, (1 - c) / c * g / (1 - g)). c is estimated on out-of-fold outputs (cross-fitting by
  query), in one of two ways (LABEL_FREQUENCY): Elkan and Noto's mean output on the held-out positives,
  or the mixture-proportion bound of Scott, Blanchard and Handy (`roc_bound`, the default: on the
  truth harness of bench/calibration.py its error is the smaller). A setting's estimate is the mean pi of
  the negatives it selects on a seeded sample of queries, selected by export's own code
  (`select_negatives`: every positive visible, near-duplicates skipped), so risk and hardness follow the
  same picks. The bootstrap resamples the queries, re-estimates c (on the out-of-fold outputs as the
  resample weighs them) and refits g on each resample.
  Assumptions: the held-out positives are like the unlabeled ones (selected completely at random), and the
  multi-positive queries are like the others: calibrated on a minority of queries, the model is applied to
  all. A sampled query's features are measured against its positives less the one its first pool hides
  (`feature_references`), so that they see as many positives as a pool member's do.
- **a cross-encoder** whose scores are probabilities (a sigmoid head, as sentence-transformers' CrossEncoder
  applies to a one-label model trained with binary cross-entropy): the mean score of the selected
  negatives, once the held-out positives show the scores calibrated (`ce_estimates`). Logit heads and
  rerankers trained with listwise losses give no probability and are not used.

With both, a setting's estimate is the one with the higher upper bound. With fewer than MIN_LANDED held-out
positives among the candidates and no usable cross-encoder, the configured selection is kept and the
reason recorded. The choice is made by one statistic at every budget: the hardest setting whose upper
bound is within it, else (the budget below what the evidence resolves, which is recorded) the lowest
upper bound.

Hardness: the median retrieval rank of the selected negatives (lower is harder) on the sampled queries,
with every positive visible as in the export; ties go to fewer short queries.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from negflow.candidates import Candidates, QueryCandidates
from negflow.files import write_json
from negflow.progress import ProgressBar
from negflow.selection import (
    FLAG_WINDOW,
    ST_MARGIN,
    ST_TOP,
    SelectionSettings,
    anchor_strategies,
    candidate_noise,
    filter_key,
    filter_mask,
    select_negatives,
)

log = logging.getLogger("negflow")

# The settings `auto` chooses among; every other selection setting (num_negatives, dup_threshold,
# short_queries, seed, ...) stays as configured.
GRID = {
    "sampling": ("top", "random", "simans"),
    "relative_margin": (None, 0.02, 0.05, 0.1),
    "positive_doc_margin": (None, 0.05, 0.1, 0.2, 0.3),
    "range_min": (0, 10, 30),
}
MIN_LANDED = 30  # held-out positives among the candidates below which the evidence is too thin
MAX_CALIBRATION_QUERIES = 5000  # multi-positive queries used (a seeded sample beyond)
HELD_OUT_PER_QUERY = 4  # positives a calibration query hides, one pool each
MAX_SAMPLED_QUERIES = 2000  # queries on which the estimate, hardness and short queries are measured (seeded)
FOLDS = 5  # cross-fitting of the PU classifier, by query
COUNT_ESTIMATOR = "roc-bound"  # how the label frequency is estimated (LABEL_FREQUENCY)
ROC_MIN_LABELED = 20  # held-out positives a roc-bound threshold keeps above it, at least
BOOTSTRAP = 200
MAX_FIT_ROWS = 200_000  # pool members the PU classifier is fitted on (a weighted sample beyond)
REFIT_STEPS = 5  # Newton steps refitting the PU classifier on a resample, from the full fit
INTERVAL = (5.0, 95.0)  # percentiles of the bootstrap: a 90% interval, its top the one compared to the budget
SEED_STREAM = 0x5EED  # keeps the hold-out draw apart from the sampler's noise
CONFIGURED = "negflow fixed (configured)"  # the reference that is the configured selection


def grid_settings(configured: SelectionSettings) -> dict[str, SelectionSettings]:
    """Every grid point as full settings (the configured ones with the grid's keys replaced), by name; a
    point whose range_min is not below the configured range_max is left out."""
    out = {}
    for values in itertools.product(*GRID.values()):
        point = dict(zip(GRID, values, strict=True))
        if configured.range_max is None or point["range_min"] < configured.range_max:
            out[setting_name(point)] = replace(configured, **point)
    return out


def setting_name(point: dict) -> str:
    """A grid point's name, e.g. `random relative_margin=0.05 positive_doc_margin=0.1 range_min=10`."""
    return " ".join([point["sampling"]] + [f"{k}={point[k]}" for k in GRID if k != "sampling"])


def reference_settings(configured: SelectionSettings) -> dict[str, SelectionSettings]:
    """The fixed strategies placed beside the grid: the configured selection and the anchors' defaults."""
    anchors = anchor_strategies(configured, has_ce=False, name=CONFIGURED)
    return {name: anchors[name] for name in (CONFIGURED, ST_TOP, ST_MARGIN, FLAG_WINDOW)}


def sample_rows(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` of `rows` (sorted), chosen by a per-row hash: stable across processes."""
    if len(rows) <= limit:
        return np.sort(rows)
    keys = candidate_noise(seed ^ SEED_STREAM, 0, rows)
    return np.sort(rows[np.argsort(keys, kind="stable")[:limit]])


@dataclass
class Pool:
    """A calibration query with one of its positives hidden: its candidates with that positive put back at
    its cosine rank (the list keeps its length), the PU features of every member (against the other
    positives), and the cross-encoder scores when there are any."""

    query: int  # index of the query among those calibration reads (the bootstrap resamples queries, not pools)
    held_out: int | None  # index of the held-out positive in the pool; None when it ranks below every candidate
    features: np.ndarray
    ce: np.ndarray | None


@dataclass
class Sampled:
    """What the estimate and hardness keep of a sampled query: its candidates' ranks, PU features (against
    `feature_references`) and CE scores (the selections themselves are kept per setting)."""

    query: int  # index of the query among those calibration reads (the bootstrap resamples them)
    cand_ranks: np.ndarray
    features: np.ndarray
    cand_ce: np.ndarray | None


def pu_features(cos: np.ndarray, positive_cos: np.ndarray, positive_query_cos: np.ndarray) -> np.ndarray:
    """What tells a positive among the candidates: score relative to the weakest and to the strongest
    positive, closeness to the nearest positive (raw, and relative to that positive's score), log rank;
    and their squares, because a positive's odds are not log-linear in them (near the positives they rise
    faster than far from them: with the linear terms alone the estimate was several points high for
    filtered settings and low for unfiltered ones on the harness)."""
    closeness = positive_cos - positive_query_cos[None, :]
    base = np.c_[
        cos - positive_query_cos.min(),
        cos - positive_query_cos.max(),
        positive_cos.max(axis=1),
        closeness.max(axis=1),
        np.log1p(np.arange(len(cos))),
    ]
    return np.c_[base, base**2]


def held_out_positives(seed: int, query_row: int, pos_rows: np.ndarray) -> np.ndarray:
    """Indices (into `pos_rows`) of the positives a calibration query hides, one pool each: up to
    HELD_OUT_PER_QUERY, in an order that is a pure function of seed, query and documents."""
    order = np.argsort(candidate_noise(seed ^ SEED_STREAM, query_row, pos_rows), kind="stable")
    return order[:HELD_OUT_PER_QUERY]


def feature_references(seed: int, query_row: int, pos_rows: np.ndarray) -> np.ndarray:
    """The positives a sampled query's PU features are measured against: all but the one its first pool
    hides (all of one), so that a candidate's features see as many positives as a pool member's do."""
    keep = np.ones(len(pos_rows), dtype=bool)
    if len(pos_rows) > 1:
        keep[held_out_positives(seed, query_row, pos_rows)[0]] = False
    return np.flatnonzero(keep)


def calibration_pool(query: QueryCandidates, index: int, hidden: int) -> Pool:
    """Query `index`'s candidates with positive `hidden` moved among them and the others kept as positives."""
    ref = np.arange(len(query.pos_rows)) != hidden
    n = len(query.cand_rows)
    h_cos = query.pos_cos[hidden]
    at = int(np.sum(query.cand_cos > h_cos))
    cos, emb, ce = query.cand_cos, query.cand_emb, query.cand_ce
    held = None
    if at < n:
        held = at

        def put(a, v):
            return np.concatenate([a[:at], np.asarray(v)[None], a[at:]])[:n]

        cos, emb = put(cos, h_cos), put(emb, query.pos_emb[hidden])
        ce = put(ce, query.pos_ce[hidden]) if ce is not None else None
    features = pu_features(cos, emb @ query.pos_emb[ref].T, query.pos_cos[ref])
    return Pool(index, held, features, ce)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, clipped so that exp never overflows."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def with_intercept(x: np.ndarray) -> np.ndarray:
    """The design matrix of `logistic_fit`: a column of ones, then `x`."""
    return np.c_[np.ones(len(x)), x]


def logistic_fit(
    design: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray | None = None,
    start: np.ndarray | None = None,
    steps: int = 30,
) -> np.ndarray:
    """Weights (intercept first) of a logistic regression by Newton's method, lightly ridged, on the rows of
    `design` (`with_intercept(x)`: a caller that fits the same rows again builds it once, as the bootstrap's
    refits do; building it was a third of each refit's time); `weight`: each row's weight (a bootstrap
    resample's counts), `start`: where Newton starts (a warm start)."""
    w = np.zeros(design.shape[1]) if start is None else start.copy()
    weight = np.ones(len(design)) if weight is None else weight
    for _ in range(steps):
        p = sigmoid(design @ w)
        hess = design.T @ (design * (weight * p * (1 - p))[:, None]) + 1e-6 * np.eye(len(w))
        step = np.linalg.solve(hess, design.T @ (weight * (y - p)))
        w += step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


def logit(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A fitted logistic model's log odds (weights from `logistic_fit`, intercept first) on rows `x`."""
    return w[0] + x @ w[1:]


def elkan_noto(g: np.ndarray, labeled: np.ndarray, weight: np.ndarray) -> float:
    """Label frequency c as Elkan and Noto estimate it: the mean output of the labeled-vs-unlabeled
    classifier on held-out labeled rows. Exact when a positive's features identify it; where positives and
    negatives overlap it comes out low (the count of unlabeled positives high)."""
    return float(np.sum(weight[labeled] * g[labeled]) / max(np.sum(weight[labeled]), 1e-12))


def roc_bound(g: np.ndarray, labeled: np.ndarray, weight: np.ndarray) -> float:
    """Label frequency c from the class prior of the unlabeled rows (the share of them that are positives),
    estimated as the mixture proportion bound of Scott, Blanchard and Handy (2013): the smallest ratio of the
    unlabeled rows' to the labeled rows' share above a threshold on the classifier's output, over thresholds
    with at least ROC_MIN_LABELED held-out positives (and a tenth of them) above (below that the ratio of
    two small counts is noise, and its minimum biased low). Exact when the top of the classifier's range
    holds positives only (irreducibility); where it does not, the prior comes out high, as Elkan and Noto's
    does, but less so, because it needs purity at the top only, not everywhere."""
    wl, wu = weight * labeled, weight * ~labeled
    order = np.argsort(-g, kind="stable")
    held_out = np.cumsum((labeled & (weight > 0))[order])  # held-out positives above, each counted once
    n_l, n_u = wl.sum(), wu.sum()
    tail_l, tail_u = np.cumsum(wl[order]) / max(n_l, 1e-12), np.cumsum(wu[order]) / max(n_u, 1e-12)
    ok = (held_out >= ROC_MIN_LABELED) & (tail_l >= 0.1)
    prior = float(np.min(tail_u[ok] / tail_l[ok])) if ok.any() else 1.0
    return float(n_l / max(n_l + min(prior, 1.0) * n_u, 1e-12))


LABEL_FREQUENCY = {"elkan-noto": elkan_noto, "roc-bound": roc_bound}


def folds(n: int, seed: int) -> np.ndarray:
    """Each calibration query's fold for cross-fitting: a seeded balanced assignment."""
    return np.random.default_rng([seed % 2**64, 11]).permutation(n) % FOLDS


def out_of_fold(
    x: np.ndarray,
    labeled: np.ndarray,
    fold: np.ndarray,
    fit: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """The classifier's output on each row from a model fitted without the row's fold (cross-fitting by
    query): the label frequency is then estimated on rows the model has not seen. `fit`: the rows a model
    may be fitted on (default all), `weight`: theirs."""
    fit = np.ones(len(x), dtype=bool) if fit is None else fit
    weight = np.ones(int(fit.sum())) if weight is None else weight
    g = np.zeros(len(x))
    y = labeled.astype(np.float64)
    for f in range(FOLDS):
        test, train = fold == f, (fold != f)[fit]
        if test.any() and train.any():
            g[test] = sigmoid(
                logit(x[test], logistic_fit(with_intercept(x[fit][train]), y[fit][train], weight=weight[train]))
            )
    return g


def resamples(n: int, seed: int) -> np.ndarray:
    """Query weights of the estimate itself (first row, all ones) and of BOOTSTRAP resamples of n queries
    (how often each query is drawn), the same for every setting."""
    rng = np.random.default_rng([seed % 2**64, 7])
    weights = np.zeros((BOOTSTRAP + 1, n))
    weights[0] = 1.0
    np.add.at(weights, (np.repeat(np.arange(1, BOOTSTRAP + 1), n), rng.integers(0, n, BOOTSTRAP * n)), 1.0)
    return weights


def with_interval(shares: np.ndarray) -> dict:
    """The estimate (the first value) and an interval from the resampled ones: the union of the percentile
    interval (q5 to q95) and the basic one (the percentile interval reflected about the estimate, 2 e - q95
    to 2 e - q5), within [0, 1]. The resamples are skewed, upwards for some settings and data and downwards
    for others (the count is a minimum over thresholds); on the truth harness neither interval alone
    covered on every protocol, their union did best (bench/calibration.py). A resample that drew none of a
    setting's queries has no share and is left out."""
    lo, hi = np.nanpercentile(shares[1:], INTERVAL)
    e = float(shares[0])
    return {"estimate": e, "interval": (float(max(0.0, min(lo, 2 * e - hi))), float(min(1.0, max(hi, 2 * e - lo))))}


@dataclass
class Picks:
    """Every setting's selected negatives on the sampled queries, flattened: for each pick its setting, its
    sampled query and its row among the sampled queries' stacked candidates."""

    setting: np.ndarray
    query: np.ndarray
    row: np.ndarray

    @classmethod
    def of(cls, sampled: list[Sampled], chosen: dict[str, list[np.ndarray]]) -> Picks:
        starts = np.cumsum([0] + [len(q.cand_ranks) for q in sampled])[:-1]
        parts = [
            (np.full(len(p), s), np.full(len(p), q.query), start + p)
            for s, picks in enumerate(chosen.values())
            for q, start, p in zip(sampled, starts, picks, strict=True)
        ]
        if not parts:
            return cls(*(np.zeros(0, dtype=np.int64) for _ in range(3)))
        return cls(*(np.concatenate(a).astype(np.int64) for a in zip(*parts, strict=True)))


@dataclass
class PuModel:
    """The PU model fitted on the pools: the classifier g's rows and weights, its full fit, and its
    out-of-fold outputs sorted once (a resample only reweighs rows), with each row's query and, for a
    held-out positive, how many of its pool's positives it stands for."""

    estimator: str
    design_fit: np.ndarray  # with_intercept of the fit rows' features
    y_fit: np.ndarray
    base: np.ndarray  # the fit rows' weights
    fit_query: np.ndarray
    w0: np.ndarray
    g: np.ndarray  # out-of-fold outputs, descending
    labeled: np.ndarray
    query: np.ndarray
    represents: np.ndarray

    def label_frequency(self, query_weight: np.ndarray) -> float:
        return LABEL_FREQUENCY[self.estimator](self.g, self.labeled, query_weight[self.query] * self.represents)

    def refit(self, query_weight: np.ndarray) -> np.ndarray:
        weight = self.base * query_weight[self.fit_query]
        return logistic_fit(self.design_fit, self.y_fit, weight=weight, start=self.w0, steps=REFIT_STEPS)

    def probability(self, x: np.ndarray, w: np.ndarray, c: float) -> np.ndarray:
        return posterior(x, w, c)


def posterior(x: np.ndarray, w: np.ndarray, c: float) -> np.ndarray:
    """pi = min(1, (1 - c) / c * g / (1 - g)) on rows `x`, g the model with weights `w`: Elkan and Noto's
    probability that an unlabeled row is a positive."""
    return np.minimum(1.0, (1 - c) / max(c, 1e-12) * np.exp(np.clip(logit(x, w), -30, 30)))


def pool_positives(pools: list[Pool], unlabeled_positives: np.ndarray) -> np.ndarray:
    """How many positives each pool holds, as the first fit counts them: its held-out one and its members'
    pi (the truth harness puts the true counts here to measure what this step's error costs)."""
    return 1.0 + unlabeled_positives


def fit_pu(pools: list[Pool], n_queries: int, seed: int, estimator: str) -> PuModel:
    """g and c on the pools. The fits see every held-out positive and a seeded share of the other members,
    weighted up to all of them (case-control sampling: the same fit in expectation, at a bounded cost).

    One held-out positive per pool is not a random sample of the pools' positives: a pool with many
    positives gets one label as a pool with few does, so the labels over-represent the few-positive pools,
    whose positives sit at the top. So the fit runs twice: the second time each held-out positive is
    weighted by the positives its pool holds by the first (one correction step)."""
    x = np.concatenate([p.features for p in pools])
    labeled = np.concatenate([np.arange(len(p.features)) == (-1 if p.held_out is None else p.held_out) for p in pools])
    row_query = np.concatenate([np.full(len(p.features), p.query) for p in pools])
    pool_of_row = np.repeat(np.arange(len(pools)), [len(p.features) for p in pools])
    share = min(1.0, MAX_FIT_ROWS / max(int((~labeled).sum()), 1))
    fit = labeled | (np.random.default_rng([seed % 2**64, 13]).random(len(x)) < share)
    design_fit, y_fit = with_intercept(x[fit]), labeled[fit].astype(np.float64)
    calibration_queries = np.unique(row_query)
    fold_of = np.zeros(n_queries, dtype=np.int64)
    fold_of[calibration_queries] = folds(len(calibration_queries), seed)
    fold = fold_of[row_query]
    represents = np.ones(len(x))
    for step in range(2):
        base = np.where(labeled, represents, 1.0)[fit] * np.where(labeled[fit], 1.0, 1.0 / share)
        g = out_of_fold(x, labeled, fold, fit, base)
        w0 = logistic_fit(design_fit, y_fit, weight=base)
        if step == 0:
            c = LABEL_FREQUENCY[estimator](g, labeled, represents)
            pi = np.where(labeled, 0.0, posterior(x, w0, c))
            represents = np.where(
                labeled, pool_positives(pools, np.bincount(pool_of_row, pi, minlength=len(pools)))[pool_of_row], 1.0
            )
    order = np.argsort(-g, kind="stable")
    return PuModel(
        estimator,
        design_fit,
        y_fit,
        base,
        row_query[fit],
        w0,
        g[order],
        labeled[order],
        row_query[order],
        represents[order],
    )


def held_out_estimates(
    pools: list[Pool],
    sampled: list[Sampled],
    chosen: dict[str, list[np.ndarray]],
    n_queries: int,
    seed: int,
    estimator: str = COUNT_ESTIMATOR,
) -> tuple[dict, dict[str, dict], dict[str, dict]]:
    """The held-out evidence, its size and its count of unlabeled positives; per setting the estimated
    false-negative share of its negatives with its interval, and what that estimate is made of.

    A candidate's probability pi of being an unlabeled positive comes from the PU model (`fit_pu`). The
    estimate of a setting is the mean pi of the negatives it selects on the sampled queries, as export
    selects them (every positive visible, near-duplicates skipped). The bootstrap resamples the queries
    (pools and sampled queries alike, `n_queries` of them in all), re-estimates c on the out-of-fold outputs
    as the resample weighs them and refits g, so both the count's and the classifier's uncertainty reach
    the interval."""
    landed = sum(p.held_out is not None for p in pools)
    evidence = {
        "kind": "held-out positives",
        "queries": len({p.query for p in pools}),
        "held_out": len(pools),
        "landed_among_candidates": landed,
        "minimum": MIN_LANDED,
        "estimator": estimator,
    }
    if landed < MIN_LANDED or not sampled:
        return evidence, {}, {}
    model = fit_pu(pools, n_queries, seed, estimator)
    app = np.concatenate([q.features for q in sampled])
    picks = Picks.of(sampled, chosen)
    n_set = len(chosen)
    shares = np.zeros((BOOTSTRAP + 1, n_set))
    for b, qw in enumerate(resamples(n_queries, seed)):
        pi = model.probability(app, model.w0 if b == 0 else model.refit(qw), model.label_frequency(qw))
        pick_w = qw[picks.query]
        positives = np.bincount(picks.setting, pick_w * pi[picks.row], minlength=n_set)
        negatives = np.bincount(picks.setting, pick_w, minlength=n_set)
        shares[b] = np.where(negatives > 0, positives / np.maximum(negatives, 1e-12), np.nan)
        if b == 0:
            per_query = float(pi.sum()) / len(sampled)
            chance = positives / max(float(pi.sum()), 1e-12)
            per_negatives = negatives / len(sampled)
    evidence["unlabeled_positives_per_query"] = round(per_query, 2)
    estimates, parts = {}, {}
    for s, name in enumerate(chosen):
        if not np.isfinite(shares[0, s]):
            continue
        estimates[name] = with_interval(shares[:, s])
        parts[name] = {
            "unlabeled_positives_per_query": round(per_query, 2),
            "chance_selected": round(float(chance[s]), 4),
            "negatives_per_query": round(float(per_negatives[s]), 3),
        }
    return evidence, estimates, parts


def ce_estimates(
    pools: list[Pool], queries: list[Sampled], chosen: dict[str, list[np.ndarray]], n_queries: int, seed: int
) -> tuple[dict | None, dict[str, dict]]:
    """The cross-encoder evidence: per setting, the mean CE probability of its selected negatives, when the
    scores are probabilities and pass a check against the held-out positives; else why they are not used.

    The check: if the scores are calibrated probabilities, a pool's held-out positive (a random one of its
    positives) scores on average E[p^2] / E[p] over the pool's members (positives are drawn in proportion
    to p); averaged over the pools, the two must agree. The scores count only when the 90% bootstrap
    interval of the mean difference holds 0; without held-out positives among the candidates they cannot be
    checked and do not count."""
    if not queries or queries[0].cand_ce is None:
        return None, {}
    all_ce = np.concatenate([q.cand_ce for q in queries])
    evidence = {"kind": "cross-encoder probabilities", "candidates": len(all_ce)}
    if all_ce.size == 0 or all_ce.min() < 0 or all_ce.max() > 1:
        evidence["unused"] = "scores outside [0, 1]: a logit head, not a probability"
        return evidence, {}
    landed = [p for p in pools if p.held_out is not None and p.ce is not None]
    if not landed:
        evidence["unused"] = "no held-out positive among the candidates to check the probabilities against"
        return evidence, {}
    weights = resamples(n_queries, seed)
    qw = weights[:, [p.query for p in landed]]
    held = np.array([p.ce[p.held_out] for p in landed], dtype=np.float64)
    ce = [p.ce.astype(np.float64) for p in landed]
    implied = np.array([(p**2).sum() / max(p.sum(), 1e-12) for p in ce])  # each pool's own E[p^2] / E[p]
    gap = (qw @ (held - implied)) / np.maximum(qw.sum(axis=1), 1e-12)
    lo, hi = np.percentile(gap[1:], INTERVAL)
    evidence["check"] = {
        "held_out_mean": round(float(held.mean()), 4),
        "calibrated_would_give": round(float(implied.mean()), 4),
        "gap_interval": [round(float(lo), 4), round(float(hi), 4)],
    }
    if not lo - 1e-9 <= 0.0 <= hi + 1e-9:  # exactly calibrated scores differ by rounding only
        evidence["unused"] = (
            f"not calibrated on the held-out positives: their mean probability {held.mean():.3f} is not what "
            f"calibrated probabilities give ({evidence['check']['calibrated_would_give']:.3f})"
        )
        return evidence, {}
    estimates = {}
    qw = weights[:, [q.query for q in queries]]
    for name, picks in chosen.items():
        probability = np.array([q.cand_ce[p].sum() for q, p in zip(queries, picks, strict=True)], dtype=np.float64)
        negatives = np.array([len(p) for p in picks], dtype=np.float64)
        if negatives.sum():
            estimates[name] = with_interval((qw @ probability) / np.maximum(qw @ negatives, 1.0))
    return evidence, estimates


def hardness(queries: list[Sampled], chosen: dict[str, list[np.ndarray]], k: list[int]) -> dict[str, dict]:
    """Per setting: median and mean rank of the selected negatives, their number, and the short queries."""
    out = {}
    for name, picks in chosen.items():
        ranks = np.concatenate([q.cand_ranks[p] for q, p in zip(queries, picks, strict=True)] + [np.zeros(0)])
        out[name] = {
            "median_rank": float(np.median(ranks)) if len(ranks) else None,
            "mean_rank": round(float(ranks.mean()), 2) if len(ranks) else None,
            "negatives": int(len(ranks)),
            "short_queries": int(sum(len(p) < n for p, n in zip(picks, k, strict=True))),
        }
    return out


def _round(estimate: dict | None) -> dict | None:
    if estimate is None:
        return None
    lo, hi = estimate["interval"]
    return {"estimate": round(estimate["estimate"], 4), "interval": [round(lo, 4), round(hi, 4)]}


def choose(rows: dict[str, dict], budget: float) -> tuple[str | None, bool, str]:
    """The hardest setting (lowest median rank, then fewest short queries) whose estimate's upper bound is
    within the budget; whether one is; and why. When none is, the budget lies below what the evidence
    resolves, and the same statistic decides: the setting with the lowest upper bound, said so."""
    estimated = {n: r for n, r in rows.items() if r["fn_share"] is not None and r["median_rank"] is not None}
    if not estimated:
        return None, False, "no setting selected any negative"
    within = [n for n, r in estimated.items() if r["fn_share"]["interval"][1] <= budget]
    if within:
        best = min(within, key=lambda n: (estimated[n]["median_rank"], estimated[n]["short_queries"], n))
        return best, True, f"the hardest of {len(within)} settings whose estimate's upper bound is within {budget:g}"
    lowest = min(estimated, key=lambda n: (estimated[n]["fn_share"]["interval"][1], estimated[n]["median_rank"], n))
    upper = estimated[lowest]["fn_share"]["interval"][1]
    return (
        lowest,
        False,
        f"the budget {budget:g} is below what the evidence resolves: no setting's upper bound is within it; took "
        f"the lowest upper bound ({upper:.3f})",
    )


def calibrate(
    candidates: Candidates, configured: SelectionSettings, budget: float, estimator: str = COUNT_ESTIMATOR
) -> dict:
    """Calibrate on `candidates` (it reads their `iterate`, `positive_counts` and `score_name`) for the
    configured settings and a budget; `estimator`: how the unlabeled positives are counted (LABEL_FREQUENCY).
    Returns what calibration.json holds: the evidence and its size, every grid setting and reference with
    its estimate, interval, what the estimate is made of, hardness and short queries, and the choice (or
    the fallback and why)."""
    seed = configured.seed
    grid = grid_settings(configured)
    references = reference_settings(configured)
    every = grid | references
    query_rows, counts = candidates.positive_counts()
    multi = sample_rows(query_rows[counts >= 2], MAX_CALIBRATION_QUERIES, seed)
    sampled = sample_rows(query_rows, MAX_SAMPLED_QUERIES, seed + 1)
    wanted = np.union1d(multi, sampled)
    index = {int(row): i for i, row in enumerate(wanted.tolist())}
    multi_set, sampled_set = set(multi.tolist()), set(sampled.tolist())
    pools, kept, kept_k = [], [], []
    chosen: dict[str, list[np.ndarray]] = {name: [] for name in every}
    bar = ProgressBar(total=len(wanted), desc="calibrate", unit=" queries", mininterval=5)
    for query in candidates.iterate(wanted):
        bar.update()
        i = index[query.query_row]
        if query.query_row in multi_set and len(query.cand_rows):
            pools += [calibration_pool(query, i, h) for h in held_out_positives(seed, query.query_row, query.pos_rows)]
        if query.query_row in sampled_set:
            k = max(0, configured.num_negatives - len(query.given_rows))
            scores = query.scores(candidates.score_name)
            noise = candidate_noise(seed, query.query_row, query.cand_rows)
            masks: dict[tuple, tuple] = {}
            for name, s in every.items():
                key = filter_key(s)
                if key not in masks:
                    masks[key] = filter_mask(scores, s)
                chosen[name].append(select_negatives(scores, replace(s, num_negatives=k), noise, masks[key]).chosen)
            refs = feature_references(seed, query.query_row, query.pos_rows)
            features = pu_features(query.cand_cos, scores.positive_cos[:, refs], query.pos_cos[refs])
            # copies: the arrays are views into the whole block of queries read from the candidate files
            ce = None if query.cand_ce is None else query.cand_ce.copy()
            kept.append(Sampled(i, query.cand_ranks.copy(), features, ce))
            kept_k.append(k)
    bar.close()
    log.info(
        "calibration: %d held-out positives of %d queries with two or more positives, %d queries sampled, %d settings",
        len(pools),
        len(multi),
        len(kept),
        len(every),
    )
    held_evidence, held, parts = held_out_estimates(pools, kept, chosen, len(wanted), seed, estimator)
    ce_evidence, ce = ce_estimates(pools, kept, chosen, len(wanted), seed)
    hard = hardness(kept, chosen, kept_k)
    rows = {}
    for name in every:
        options = [e for e in (held.get(name), ce.get(name)) if e is not None]
        best = max(options, key=lambda e: e["interval"][1]) if options else None
        rows[name] = {
            "settings": {key: getattr(every[name], key) for key in (*GRID, "range_max")},
            "fn_share": _round(best),
            "held_out": _round(held.get(name)),
            "held_out_made_of": parts.get(name),
            "cross_encoder": _round(ce.get(name)),
            **hard[name],
        }
    within = False
    if held or ce:
        name, within, reason = choose({n: rows[n] for n in grid}, budget)
    else:
        ce_why = "no cross-encoder" if ce_evidence is None else f"cross-encoder scores unused ({ce_evidence['unused']})"
        name, reason = (
            None,
            (
                f"thin evidence: {held_evidence['landed_among_candidates']} held-out positives landed among the "
                f"candidates (at least {MIN_LANDED} needed) and {ce_why}"
            ),
        )
    if name is None:
        reason += "; kept the configured selection"
    log.info("calibration chose %s: %s", name or "the configured selection", reason)
    return {
        "budget": budget,
        "hardness": "median retrieval rank of the selected negatives (lower is harder)",
        "evidence": [e for e in (held_evidence, ce_evidence) if e is not None],
        "grid": {n: rows[n] for n in grid},
        "references": {n: rows[n] for n in references},
        "choice": {
            "name": name,
            "settings": rows[name]["settings"] if name else None,
            "fallback": name is None,
            "within_budget": within,
            "reason": reason,
        },
    }


def chosen_settings(calibration: dict, configured: SelectionSettings) -> SelectionSettings:
    """The settings export selects with under `selection: auto`: the configured ones with the calibration's
    choice applied (unchanged on a fallback)."""
    choice = calibration["choice"]
    if choice["fallback"]:
        return configured
    return replace(configured, **choice["settings"])


def within_budget(calibration: dict) -> bool:
    """Whether the choice's upper bound is within the budget (recorded; read from the row in files written
    before it was)."""
    choice = calibration["choice"]
    if "within_budget" in choice:
        return choice["within_budget"]
    return calibration["grid"][choice["name"]]["fn_share"]["interval"][1] <= calibration["budget"]


def describe(calibration: dict) -> str:
    """One line for logs and the command's summary: the choice, its estimate and the budget."""
    choice = calibration["choice"]
    if choice["fallback"]:
        return f"auto kept the configured selection ({choice['reason']})"
    row = calibration["grid"][choice["name"]]
    lo, hi = row["fn_share"]["interval"]
    shown = "" if within_budget(calibration) else "no setting shown within the budget; "
    return (
        f"{shown}auto chose {choice['name']}: estimated false negatives {100 * row['fn_share']['estimate']:.1f}% "
        f"(90% interval {100 * lo:.1f}-{100 * hi:.1f}%, budget {100 * calibration['budget']:.1f}%), "
        f"median rank {row['median_rank']}"
    )


def calibrate_stage(inputs: Mapping, settings: dict, out_path: str) -> dict[str, int]:
    """Rule calibrate_selection: calibrate on the rule's inputs (those `Candidates.from_inputs` reads) and
    write calibration.json; returns the evidence's counts."""
    result = calibrate(
        Candidates.from_inputs(inputs, settings), SelectionSettings.from_settings(settings), settings["fn_budget"]
    )
    write_json(out_path, result)
    log.info("%s", describe(result))
    held = result["evidence"][0]
    return {"calibration_queries": held["queries"], "landed": held["landed_among_candidates"]}


def read_choice(inputs: Mapping, settings: dict) -> tuple[SelectionSettings, dict | None]:
    """The settings a selecting rule (export, audit) uses: as configured, or under `selection: auto` with
    the choice of its `calibration` input applied; and that choice (None for a fixed selection)."""
    configured = SelectionSettings.from_settings(settings)
    if settings.get("selection") != "auto":
        return configured, None
    with open(inputs["calibration"], encoding="utf-8") as f:
        calibration = json.load(f)
    return chosen_settings(calibration, configured), calibration["choice"] | {"summary": describe(calibration)}
