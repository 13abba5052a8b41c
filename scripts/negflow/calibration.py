"""Rule calibrate_selection (`selection: auto`): estimate, on the run's own candidates, the share of false
negatives each setting of a fixed grid would select and how hard its negatives are, and choose the hardest
setting whose estimate, at the upper end of its interval, stays within `fn_budget`.

Evidence (each gives, per setting, an estimate with a 90% bootstrap interval over queries):

- **held-out positives.** A query with two or more positives hides one (seeded, `held_out_positive`). Put
  back among its candidates at its own cosine rank, it shows where an unlabeled positive of that query
  lands: `landing` is the chance a setting selects it. That tells *where* unlabeled positives go, not how
  many there are; their number comes from positive-unlabeled learning (Elkan and Noto, 2008): a logistic
  model tells the held-out positives from the candidates on three features (score relative to the weakest
  positive, closeness to a positive relative to the query's, log rank), `c` is its mean output on the
  held-out positives, and a candidate is a positive with probability min(1, (1 - c) / c x g / (1 - g));
  the bootstrap resamples c with the queries. Summed, that is
  the count of unlabeled positives among the candidates. Assumptions: the held-out positives are like the
  unlabeled ones (selected completely at random), and the multi-positive queries are like the others.
  Where positives and negatives overlap in these features, c is underestimated and so the count is
  overestimated: the estimate errs on the safe side.
- **a cross-encoder** whose scores are probabilities (a sigmoid head, as sentence-transformers' CrossEncoder
  applies to a one-label model trained with binary cross-entropy): the mean score of the selected
  negatives. Logit heads and rerankers trained with listwise losses give no probability and are not used.

With both, a setting's estimate is the one with the higher upper bound. With fewer than MIN_LANDED held-out
positives among the candidates and no usable cross-encoder, the configured selection is kept and the
reason recorded.
When no setting's upper bound is within the budget, the budget lies below what the evidence can resolve
(few queries cannot show a small share), so the estimates cannot rank the settings there either; the
choice is then the strictest grid point, by construction the one that keeps the fewest candidates near
the positives (`strictest`), and that is recorded.

Hardness: the median retrieval rank of the selected negatives (lower is harder) on a seeded sample of
queries, with every positive visible as in the export; ties go to fewer short queries.
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
    QueryScores,
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
MAX_HARDNESS_QUERIES = 2000  # queries on which hardness and short queries are measured (seeded sample)
BOOTSTRAP = 200
INTERVAL = (5.0, 95.0)  # percentiles of the bootstrap: a 90% interval, its top the one compared to the budget
SIMANS_DRAWS = 128
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


def held_out_positive(seed: int, query_row: int, pos_rows: np.ndarray) -> int:
    """Index (into `pos_rows`) of the positive a query hides for calibration: a pure function of seed, query
    and documents, the same in every process."""
    return int(np.argmin(candidate_noise(seed ^ SEED_STREAM, query_row, pos_rows)))


def sample_rows(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` of `rows` (sorted), chosen by a per-row hash: stable across processes."""
    if len(rows) <= limit:
        return np.sort(rows)
    keys = candidate_noise(seed ^ SEED_STREAM, 0, rows)
    return np.sort(rows[np.argsort(keys, kind="stable")[:limit]])


@dataclass
class Sampled:
    """What hardness and the cross-encoder evidence keep of a sampled query: its candidates' ranks and CE
    scores (the selections themselves are kept per setting)."""

    cand_ranks: np.ndarray
    cand_ce: np.ndarray | None


@dataclass
class Pool:
    """One calibration query: its candidates with the held-out positive put back at its cosine rank (the
    list keeps its length), the scores the filters read with the other positives as the positives, and the
    PU features of every pool member."""

    query_row: int
    scores: QueryScores
    held_out: int | None  # index of the held-out positive in the pool; None when it ranks below every candidate
    features: np.ndarray


def pu_features(cos: np.ndarray, positive_cos: np.ndarray, positive_query_cos: np.ndarray) -> np.ndarray:
    """Score relative to the weakest positive, closeness to a positive relative to the query's, log rank."""
    return np.c_[
        cos - positive_query_cos.min(),
        (positive_cos - positive_query_cos[None, :]).max(axis=1),
        np.log1p(np.arange(len(cos))),
    ]


def calibration_pool(query: QueryCandidates, hidden: int, score_name: str) -> Pool:
    """The query's candidates with positive `hidden` moved among them and the others kept as positives."""
    ref = np.arange(len(query.pos_rows)) != hidden
    n = len(query.cand_rows)
    h_cos = query.pos_cos[hidden]
    at = int(np.sum(query.cand_cos > h_cos))
    rows, cos, emb, hashes = query.cand_rows, query.cand_cos, query.cand_emb, query.cand_hashes
    ce = query.cand_ce
    held = None
    if at < n:
        held = at

        def put(a, v):
            return np.concatenate([a[:at], np.asarray(v)[None], a[at:]])[:n]

        rows = put(rows, query.pos_rows[hidden])
        cos = put(cos, h_cos)
        emb = put(emb, query.pos_emb[hidden])
        hashes = put(hashes, query.pos_hashes[hidden])
        ce = put(ce, query.pos_ce[hidden]) if ce is not None else None
    ref_emb, ref_cos = query.pos_emb[ref], query.pos_cos[ref]
    ref_ce = query.pos_ce[ref] if query.pos_ce is not None else None
    positive_cos = emb @ ref_emb.T
    use_ce = score_name == "ce"
    scores = QueryScores(
        scores=ce if use_ce else cos,
        positive_scores=ref_ce if use_ce else ref_cos,
        ranks=np.arange(n),
        ce_scores=ce,
        positive_cos=positive_cos,
        positive_query_cos=ref_cos,
        same_text=np.isin(hashes, query.pos_hashes[ref]),
    )  # no candidate_cos: `landing` leaves near-duplicate skipping out, and pools are kept until the estimate
    features = pu_features(cos, positive_cos, ref_cos)
    return Pool(query.query_row, scores, held, features)


def landing(pool: Pool, s: SelectionSettings, k: int, seed: int, keep: np.ndarray | None = None) -> tuple[float, int]:
    """The chance that `s` selects the held-out positive of `pool` (0 when it is not among the candidates),
    and how many other candidates `s` selects. `k`: negatives to select. Top: whether it is among the first
    k survivors; random: k over the survivors; SimANS: the share of SIMANS_DRAWS Gumbel draws that pick it.
    Near-duplicate skipping is left out (it only lowers the chance). `keep`: `s`'s filter mask, if known."""
    if keep is None:
        keep, _ = filter_mask(pool.scores, s)
    survivors = np.flatnonzero(keep)
    h = pool.held_out
    h_in = h is not None and bool(keep[h])
    others = min(k, len(survivors) - h_in)
    if not h_in or k == 0:
        return 0.0, others
    if s.sampling == "top":
        return float(np.sum(survivors < h) < k), others
    if s.sampling == "random":
        return min(1.0, k / len(survivors)), others
    positive = float(np.min(pool.scores.positive_scores))
    log_w = -s.simans_a * (np.asarray(pool.scores.scores, dtype=np.float64)[survivors] - positive - s.simans_b) ** 2
    u = np.random.default_rng([seed % 2**64, pool.query_row, h]).random((SIMANS_DRAWS, len(survivors)))
    keys = log_w[None, :] - np.log(-np.log(u))
    at = int(np.searchsorted(survivors, h))
    return float(np.mean((keys > keys[:, [at]]).sum(axis=1) < k)), others


def logistic_fit(x: np.ndarray, y: np.ndarray, steps: int = 30) -> np.ndarray:
    """Weights (intercept first) of a logistic regression by Newton's method, lightly ridged."""
    a = np.c_[np.ones(len(x)), x]
    w = np.zeros(a.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -30, 30)))
        hess = a.T @ (a * (p * (1 - p))[:, None]) + 1e-6 * np.eye(len(w))
        step = np.linalg.solve(hess, a.T @ (y - p))
        w += step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


def labeled_odds(x: np.ndarray, labeled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The classifier of Elkan and Noto's PU learning, labeled rows against the others: its output g on each
    row as the odds g / (1 - g), and g itself. With c the mean of g on the labeled rows (the label
    frequency), an unlabeled row is a positive with probability min(1, (1 - c) / c * odds)."""
    w = logistic_fit(x, labeled.astype(np.float64))
    g = 1.0 / (1.0 + np.exp(-np.clip(np.c_[np.ones(len(x)), x] @ w, -30, 30)))
    return g / np.maximum(1 - g, 1e-12), g


def resamples(n: int, seed: int) -> np.ndarray:
    """Query weights of the estimate itself (first row, all ones) and of BOOTSTRAP resamples of n queries
    (how often each query is drawn), the same for every setting."""
    rng = np.random.default_rng([seed % 2**64, 7])
    weights = np.zeros((BOOTSTRAP + 1, n))
    weights[0] = 1.0
    np.add.at(weights, (np.repeat(np.arange(1, BOOTSTRAP + 1), n), rng.integers(0, n, BOOTSTRAP * n)), 1.0)
    return weights


def with_interval(shares: np.ndarray) -> dict:
    """The estimate (the first value) and the percentile interval of the resampled ones."""
    lo, hi = np.percentile(shares[1:], INTERVAL)
    return {"estimate": float(shares[0]), "interval": (float(lo), float(hi))}


def held_out_estimates(
    pools: list[Pool], settings: dict[str, SelectionSettings], ks: list[int], seed: int
) -> tuple[dict, dict[str, dict]]:
    """The held-out evidence: its size and the PU count of unlabeled positives, and per setting the
    estimated false-negative share with its interval."""
    landed = [p for p in pools if p.held_out is not None]
    evidence = {
        "kind": "held-out positives",
        "queries": len(pools),
        "landed_among_candidates": len(landed),
        "minimum": MIN_LANDED,
    }
    if len(landed) < MIN_LANDED:
        return evidence, {}
    x = np.concatenate([p.features for p in pools])
    labeled = np.concatenate(
        [np.arange(len(p.features)) == (p.held_out if p.held_out is not None else -1) for p in pools]
    )
    odds, g = labeled_odds(x, labeled)
    odds[labeled] = 0.0
    starts = np.cumsum([0] + [len(p.features) for p in pools])[:-1]
    in_pool = np.array([p.held_out is not None for p in pools], dtype=np.float64)
    g_held = np.zeros(len(pools))
    g_held[in_pool > 0] = g[labeled]  # one labeled row per query whose held-out positive landed
    weights = resamples(len(pools), seed)
    # The label frequency c of each row of weights (resampling the held-out positives it is the mean over),
    # and from it every query's count of unlabeled positives: a (resamples + 1) x queries table, so that
    # the uncertainty of c reaches the interval.
    c = (weights @ (g_held * in_pool)) / np.maximum(weights @ in_pool, 1.0)
    scale = (1 - c) / np.maximum(c, 1e-12)
    unlabeled = np.stack([np.add.reduceat(np.minimum(1.0, s * odds), starts) for s in scale])
    evidence |= {"label_frequency": round(float(c[0]), 4), "unlabeled_positives": round(float(unlabeled[0].sum()), 1)}
    estimates = {}
    chance = {name: np.zeros(len(pools)) for name in settings}
    others = {name: np.zeros(len(pools)) for name in settings}
    for i, (p, k) in enumerate(zip(pools, ks, strict=True)):
        masks: dict[tuple, np.ndarray] = {}
        for name, s in settings.items():
            key = filter_key(s)
            if key not in masks:
                masks[key] = filter_mask(p.scores, s)[0]
            chance[name][i], others[name][i] = landing(p, s, k, seed, masks[key])
    for name in settings:
        # Per query, its unlabeled positives times the chance that one of them is selected, as its held-out
        # positive was; summed over the queries whose held-out positive is among the candidates and scaled
        # to all of them by their unlabeled positives; half a landing is added, so that no landing seen is
        # not read as none possible. Over the negatives selected. One value per row of query weights.
        u_landed = (weights * unlabeled * in_pool).sum(axis=1)
        landings = (weights * unlabeled * (chance[name] * in_pool)).sum(axis=1)
        landings += 0.5 * u_landed / np.maximum(weights @ in_pool, 1.0)
        expected = landings * (weights * unlabeled).sum(axis=1) / np.maximum(u_landed, 1e-12)
        shares = np.where(u_landed > 0, np.minimum(1.0, expected / np.maximum(weights @ others[name], 1.0)), 1.0)
        estimates[name] = with_interval(shares)
    return evidence, estimates


def ce_estimates(
    queries: list[Sampled], chosen: dict[str, list[np.ndarray]], seed: int
) -> tuple[dict | None, dict[str, dict]]:
    """The cross-encoder evidence: per setting, the mean CE probability of its selected negatives, when the
    scores are probabilities (all within [0, 1]); else why they are not used."""
    if not queries or queries[0].cand_ce is None:
        return None, {}
    all_ce = np.concatenate([q.cand_ce for q in queries])
    evidence = {"kind": "cross-encoder probabilities", "candidates": len(all_ce)}
    if all_ce.size == 0 or all_ce.min() < 0 or all_ce.max() > 1:
        evidence["unused"] = "scores outside [0, 1]: a logit head, not a probability"
        return evidence, {}
    weights = resamples(len(queries), seed)
    estimates = {}
    for name, picks in chosen.items():
        probability = np.array([q.cand_ce[p].sum() for q, p in zip(queries, picks, strict=True)], dtype=np.float64)
        negatives = np.array([len(p) for p in picks], dtype=np.float64)
        estimates[name] = with_interval((weights @ probability) / np.maximum(weights @ negatives, 1.0))
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


def strictest(configured: SelectionSettings) -> str:
    """The grid point that, by construction, keeps the fewest candidates near the positives: the largest
    margins, sampled at random (over the same survivors, deeper on average than top or SimANS), from the
    deepest rank whose window (before a configured range_max) still holds num_negatives."""
    end, k = configured.range_max, configured.num_negatives
    starts = [r for r in GRID["range_min"] if end is None or end - r >= k]
    point = {key: max(v for v in GRID[key] if v is not None) for key in ("relative_margin", "positive_doc_margin")}
    return setting_name(point | {"sampling": "random", "range_min": max(starts, default=0)})


def choose(rows: dict[str, dict], budget: float, safest: str) -> tuple[str | None, bool, str]:
    """The hardest setting (lowest median rank, then fewest short queries) whose estimate's upper bound is
    within the budget; whether one is; and why. When none is, the budget lies below what the evidence can
    show, so its estimates cannot rank the settings either: `safest` (the strictest grid point), or, when
    it selects nothing, the setting with the lowest upper bound."""
    estimated = {n: r for n, r in rows.items() if r["fn_share"] is not None and r["median_rank"] is not None}
    if not estimated:
        return None, False, "no setting selected any negative"
    within = [n for n, r in estimated.items() if r["fn_share"]["interval"][1] <= budget]
    if within:
        best = min(within, key=lambda n: (estimated[n]["median_rank"], estimated[n]["short_queries"], n))
        return best, True, f"the hardest of {len(within)} settings whose estimate's upper bound is within {budget:g}"
    lowest = min(estimated, key=lambda n: (estimated[n]["fn_share"]["interval"][1], estimated[n]["median_rank"], n))
    upper = estimated[lowest]["fn_share"]["interval"][1]
    reason = f"no setting's upper bound is within {budget:g} (the lowest is {upper:.3f})"
    if safest in estimated:
        return safest, False, reason + ": took the strictest setting"
    return lowest, False, reason + ": took that one (the strictest selects nothing)"


def calibrate(candidates: Candidates, configured: SelectionSettings, budget: float) -> dict:
    """Calibrate on `candidates` (it reads their `iterate`, `positive_counts` and `score_name`) for the
    configured settings and a budget. Returns what calibration.json holds: the evidence and its size, every
    grid setting and reference with its estimate, interval, hardness and short queries, and the choice (or
    the fallback and why)."""
    seed = configured.seed
    grid = grid_settings(configured)
    references = reference_settings(configured)
    every = grid | references
    query_rows, counts = candidates.positive_counts()
    multi = sample_rows(query_rows[counts >= 2], MAX_CALIBRATION_QUERIES, seed)
    sampled = sample_rows(query_rows, MAX_HARDNESS_QUERIES, seed + 1)
    multi_set, sampled_set = set(multi.tolist()), set(sampled.tolist())
    pools, pool_k, kept, kept_k = [], [], [], []
    chosen: dict[str, list[np.ndarray]] = {name: [] for name in every}
    wanted = np.union1d(multi, sampled)
    bar = ProgressBar(total=len(wanted), desc="calibrate", unit=" queries", mininterval=5)
    for query in candidates.iterate(wanted):
        bar.update()
        k = max(0, configured.num_negatives - len(query.given_rows))
        if query.query_row in multi_set and len(query.cand_rows):
            hidden = held_out_positive(seed, query.query_row, query.pos_rows)
            pools.append(calibration_pool(query, hidden, candidates.score_name))
            pool_k.append(k)
        if query.query_row in sampled_set:
            scores = query.scores(candidates.score_name)
            noise = candidate_noise(seed, query.query_row, query.cand_rows)
            masks: dict[tuple, tuple] = {}
            for name, s in every.items():
                key = filter_key(s)
                if key not in masks:
                    masks[key] = filter_mask(scores, s)
                chosen[name].append(select_negatives(scores, replace(s, num_negatives=k), noise, masks[key]).chosen)
            # copies: the arrays are views into the whole block of queries read from the candidate files
            kept.append(Sampled(query.cand_ranks.copy(), None if query.cand_ce is None else query.cand_ce.copy()))
            kept_k.append(k)
    bar.close()
    log.info(
        "calibration: %d queries with two or more positives, %d sampled for hardness, %d settings",
        len(pools),
        len(kept),
        len(every),
    )
    held_evidence, held = held_out_estimates(pools, every, pool_k, seed)
    ce_evidence, ce = ce_estimates(kept, chosen, seed)
    hard = hardness(kept, chosen, kept_k)
    rows = {}
    for name in every:
        options = [e for e in (held.get(name), ce.get(name)) if e is not None]
        best = max(options, key=lambda e: e["interval"][1]) if options else None
        rows[name] = {
            "settings": {key: getattr(every[name], key) for key in (*GRID, "range_max")},
            "fn_share": _round(best),
            "held_out": _round(held.get(name)),
            "cross_encoder": _round(ce.get(name)),
            **hard[name],
        }
    within = False
    if held or ce:
        name, within, reason = choose({n: rows[n] for n in grid}, budget, strictest(configured))
    else:
        name, reason = (
            None,
            (
                f"thin evidence: {held_evidence['landed_among_candidates']} held-out positives landed among the "
                f"candidates (at least {MIN_LANDED} needed) and no cross-encoder probabilities"
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
