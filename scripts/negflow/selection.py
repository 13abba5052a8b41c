"""Choose negatives among one query's ranked candidates. Pure functions over score arrays, no I/O.

Filters run in a fixed order and each counts the candidates it removes from those still in play, so
the counts add up to everything that was dropped. A sampler then orders the survivors and they are
taken greedily, skipping near-duplicates of negatives already kept. Negatives the data gives (a pairs
dataset's given negatives, `grades`) are listed first and count towards num_negatives (`select_query`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import numpy as np

SAMPLERS = ("top", "random", "simans")
SHORT_POLICIES = ("keep", "pad", "drop")

# Every filter, in the order it runs (selection.json reports a count for each that ran), with the settings
# that turn it on (`SelectionSettings.without` turns them off); same_text_as_positive always runs.
FILTERS = {
    "window": ("range_min", "range_max"),
    "same_text_as_positive": (),
    "max_score": ("max_score",),
    "min_score": ("min_score",),
    "absolute_margin": ("absolute_margin",),
    "relative_margin": ("relative_margin",),
    "ce_max": ("ce_max",),
    "positive_doc_margin": ("positive_doc_margin",),
    "duplicate_of_positive": ("dup_threshold",),
    "duplicate_of_negative": ("dup_threshold",),
}
# The filters that read a candidate's selection score or cross-encoder score, not its embedding.
SCORE_FILTERS = ("max_score", "min_score", "absolute_margin", "relative_margin", "ce_max")


@dataclass(frozen=True)
class SelectionSettings:
    """The export-stage settings that decide which candidates become negatives (see config/schema.yaml)."""

    num_negatives: int = 8
    range_min: int = 0
    range_max: int | None = None
    max_score: float | None = None
    min_score: float | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = 0.05
    ce_max: float | None = None
    positive_doc_margin: float | None = 0.1
    dup_threshold: float | None = 0.95
    sampling: str = "random"
    simans_a: float = 50.0
    simans_b: float = -0.1
    short_queries: str = "keep"
    seed: int = 42

    @classmethod
    def from_settings(cls, settings: dict) -> SelectionSettings:
        """The selection subset of a dataset's settings (other keys are ignored)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})

    def __post_init__(self):
        if self.sampling not in SAMPLERS:
            raise ValueError(f"sampling must be one of {SAMPLERS}, got {self.sampling!r}")
        if self.short_queries not in SHORT_POLICIES:
            raise ValueError(f"short_queries must be one of {SHORT_POLICIES}, got {self.short_queries!r}")
        if self.range_max is not None and self.range_max <= self.range_min:
            raise ValueError(f"range_max ({self.range_max}) must be above range_min ({self.range_min})")

    def without(self, *filters: str) -> SelectionSettings:
        """These settings with the named filters (keys of FILTERS) turned off."""
        return replace(self, **{key: 0 if key == "range_min" else None for name in filters for key in FILTERS[name]})


SELECTION_KEYS = [f.name for f in fields(SelectionSettings)]


# The strategies of the tools negflow replaces that the audit replays and the calibration places beside its
# grid (the ones every run can replay; with a cross-encoder, anchor_strategies adds two more).
ST_TOP = "sentence-transformers top"
ST_MARGIN = "sentence-transformers / NV-Retriever relative_margin=0.05 top"
FLAG_WINDOW = "FlagEmbedding ranks 10-210 random"


def anchor_strategies(
    configured: SelectionSettings, has_ce: bool, name: str = "negflow (configured)"
) -> dict[str, SelectionSettings]:
    """The selection export makes (under `name`) plus what the tools negflow replaces do by default, with
    the same number of negatives and seed. Exact-text duplicates of a positive go in all of them, as they
    do in the originals."""
    plain = replace(configured.without(*FILTERS), sampling="top", short_queries="keep")
    strategies = {
        name: configured,
        ST_TOP: plain,
        ST_MARGIN: replace(plain, relative_margin=0.05),
        FLAG_WINDOW: replace(plain, range_min=10, range_max=210, sampling="random"),
        "SimANS a=50 b=-0.1": replace(plain, sampling="simans", simans_a=50.0, simans_b=-0.1),
    }
    if has_ce:
        strategies["RocketQA ce_max=0.1 top"] = replace(plain, ce_max=0.1)
        strategies["negminer CE margin 0.05 + dup 0.95 top"] = replace(plain, absolute_margin=0.05, dup_threshold=0.95)
    return strategies


def lists_given_negatives(settings: dict) -> bool:
    """Whether selection lists a dataset's given negatives before the mined ones: a pairs dataset read with
    given_negatives: keep (a rule's settings carry that key only for a pairs dataset)."""
    return settings.get("given_negatives") == "keep"


def relative_ceiling(reference: np.ndarray | float, margin: float) -> np.ndarray | float:
    """Highest score allowed: ref - |ref| * margin (NV-Retriever's TopK-PercPos, written so that it also
    tightens, not loosens, when scores are negative, e.g. CE logits)."""
    return reference - np.abs(reference) * margin


@dataclass
class QueryScores:
    """One query's candidates (in retrieval-rank order) and positives, as the filters need them.

    `ranks` are 0-based retrieval positions (default: the array order), so the window keeps
    range_min <= rank < range_max.
    `positive_cos` is the embedding cosine of each candidate to each positive (n_candidates x n_positives),
    `positive_query_cos` the cosine of each positive to the query, `candidate_cos` the cosines among
    candidates (only needed for near-duplicate removal).
    """

    scores: np.ndarray
    positive_scores: np.ndarray
    ranks: np.ndarray | None = None
    ce_scores: np.ndarray | None = None
    positive_cos: np.ndarray | None = None
    positive_query_cos: np.ndarray | None = None
    candidate_cos: np.ndarray | None = None
    same_text: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)


@dataclass
class Selection:
    """Indices of the chosen candidates (into the query's rank-ordered arrays, ascending) and why others went."""

    chosen: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)
    eligible: int = 0


def filter_mask(query: QueryScores, s: SelectionSettings) -> tuple[np.ndarray, dict[str, int]]:
    """Candidates that pass every per-candidate filter, and each filter's drop count."""
    n = len(query)
    scores = np.asarray(query.scores, dtype=np.float64)
    ranks = np.arange(n) if query.ranks is None else np.asarray(query.ranks)
    pos_min = float(np.min(query.positive_scores)) if len(query.positive_scores) else None
    keep = np.ones(n, dtype=bool)
    dropped: dict[str, int] = {}

    def apply(name: str, bad: np.ndarray) -> None:
        hit = keep & bad
        dropped[name] = int(hit.sum())
        keep[hit] = False

    if s.range_min > 0 or s.range_max is not None:
        apply("window", (ranks < s.range_min) | ((ranks >= s.range_max) if s.range_max is not None else False))
    if query.same_text is not None:
        apply("same_text_as_positive", np.asarray(query.same_text, dtype=bool))
    if s.max_score is not None:
        apply("max_score", scores > s.max_score)
    if s.min_score is not None:
        apply("min_score", scores < s.min_score)
    if s.absolute_margin is not None and pos_min is not None:
        apply("absolute_margin", scores > pos_min - s.absolute_margin)
    if s.relative_margin is not None and pos_min is not None:
        apply("relative_margin", scores > relative_ceiling(pos_min, s.relative_margin))
    if s.ce_max is not None and query.ce_scores is not None:
        apply("ce_max", np.asarray(query.ce_scores, dtype=np.float64) > s.ce_max)
    if query.positive_cos is not None and query.positive_cos.size:
        if s.positive_doc_margin is not None and query.positive_query_cos is not None:
            ceiling = relative_ceiling(np.asarray(query.positive_query_cos, dtype=np.float64), s.positive_doc_margin)
            apply("positive_doc_margin", (query.positive_cos > ceiling[None, :]).any(axis=1))
        if s.dup_threshold is not None:
            apply("duplicate_of_positive", (query.positive_cos > s.dup_threshold).any(axis=1))
    return keep, dropped


GOLDEN64 = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: a bijective mix of uint64 arrays (arithmetic wraps modulo 2**64)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def candidate_noise(seed: int, query_row: int, doc_rows: np.ndarray) -> np.ndarray:
    """A uniform (0, 1) value per (seed, query, document), the same whichever other documents are
    candidates: a small change of the candidate list (another precision, index or model version) changes
    only the picks it touches, where a shuffle of the list would redraw them all."""
    key = np.array([seed % 2**64], dtype=np.uint64)
    with np.errstate(over="ignore"):
        stream = _splitmix64(_splitmix64(key) + np.uint64(query_row))
        rows = np.asarray(doc_rows, dtype=np.uint64) + np.uint64(1)
        bits = _splitmix64(rows * GOLDEN64 + stream)
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def sampling_order(query: QueryScores, candidates: np.ndarray, s: SelectionSettings, noise: np.ndarray) -> np.ndarray:
    """The order in which surviving candidates are taken: rank order (`top`), ascending noise (`random`:
    a uniform order), or SimANS: weighted sampling without replacement, weight exp(-a (s - s_pos - b)^2)
    with s_pos the query's lowest positive score (Gumbel top-k with Gumbel(noise), so weights that
    underflow still order). `noise` holds one uniform (0, 1) value per candidate of the query."""
    if s.sampling == "top" or len(candidates) == 0:
        return candidates
    u = np.asarray(noise, dtype=np.float64)[candidates]
    if s.sampling == "random":
        return candidates[np.argsort(u, kind="stable")]
    pos = float(np.min(query.positive_scores))
    log_weight = -s.simans_a * (np.asarray(query.scores, dtype=np.float64)[candidates] - pos - s.simans_b) ** 2
    keys = log_weight - np.log(-np.log(u))
    return candidates[np.argsort(-keys, kind="stable")]


def filter_key(s: SelectionSettings) -> tuple:
    """The settings `filter_mask` reads: selections that share it share their filtered candidates."""
    return tuple(getattr(s, key) for keys in FILTERS.values() for key in keys)


def select_negatives(
    query: QueryScores, s: SelectionSettings, noise: np.ndarray, filtered: tuple | None = None
) -> Selection:
    """Filter, order by the sampler, then take up to `num_negatives`, skipping a candidate whose cosine
    to a negative already taken is above `dup_threshold`. `filtered`: `filter_mask(query, s)` when the
    caller has it already."""
    keep, dropped = filtered if filtered is not None else filter_mask(query, s)
    order = sampling_order(query, np.flatnonzero(keep), s, noise)
    chosen: list[int] = []
    near_duplicates = 0
    check_duplicates = s.dup_threshold is not None and query.candidate_cos is not None
    for i in order.tolist():
        if len(chosen) == s.num_negatives:
            break
        if check_duplicates and chosen and np.any(query.candidate_cos[i, chosen] > s.dup_threshold):
            near_duplicates += 1
            continue
        chosen.append(i)
    if s.dup_threshold is not None:
        dropped = dropped | {"duplicate_of_negative": near_duplicates}
    return Selection(np.sort(np.array(chosen, dtype=np.int64)), dropped, int(keep.sum()))


@dataclass
class QuerySelection:
    """One query's outcome: the candidates chosen (as Selection.chosen), the padding documents (corpus row,
    cosine), the filters' drop counts, whether the query was short of num_negatives before padding, and
    whether it is written at all (short_queries: drop removes a short one)."""

    chosen: np.ndarray
    padded: list[tuple[int, float]]
    dropped: dict[str, int]
    short: bool
    written: bool


def select_query(
    query: QueryScores,
    s: SelectionSettings,
    noise: np.ndarray,
    given: int = 0,
    pad: Callable[[Selection, SelectionSettings], list[tuple[int, float]]] | None = None,
) -> QuerySelection:
    """Everything selection does for one query: filters and sampler pick from the candidates; `given`
    negatives (the data's own, listed first) count towards num_negatives; a query left short is kept,
    dropped, or padded by `pad(selection, settings)` with documents from outside its candidates, as
    short_queries says."""
    s = replace(s, num_negatives=max(0, s.num_negatives - given)) if given else s
    selection = select_negatives(query, s, noise)
    short = len(selection.chosen) < s.num_negatives
    if short and s.short_queries == "drop":
        return QuerySelection(selection.chosen, [], selection.dropped, short=True, written=False)
    padded = pad(selection, s) if short and s.short_queries == "pad" and pad is not None else []
    return QuerySelection(selection.chosen, padded, selection.dropped, short=short, written=True)


def no_negatives_warning(report: dict) -> str | None:
    """When selection kept no negative at all (selection.json's `report`), one line that says so and names
    the filters that dropped the candidates, most first; else None."""
    counts = report["counts"]
    if counts["negatives"] or counts["given_negatives"]:
        return None
    drops = sorted(((n, name) for name, n in report["dropped"].items() if n), reverse=True)
    why = ", ".join(f"{name} dropped {n:,}" for n, name in drops) or "no filter dropped any"
    return (
        f"no negative survived selection: of {counts['candidates']:,} candidates of {counts['queries']:,} queries, "
        f"{why}; the training files have no negatives (loosen these settings or check the model)"
    )
