"""Stage 5 (rule export_negatives): select negatives per query (`Candidates.select`, which runs
`selection.select_query`), write `negatives.jsonl` (negminer's schema) and `selection.json`.
"""

from __future__ import annotations

import logging
from array import array
from collections import Counter

import numpy as np

from negflow.candidates import Candidates
from negflow.files import atomic_output, write_json
from negflow.negatives import NegativesRecord
from negflow.progress import ProgressBar
from negflow.selection import FILTERS, SelectionSettings, no_negatives_warning

log = logging.getLogger("negflow")

DECIMALS = 6
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def quantiles(values) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    qs = np.quantile(np.asarray(values, dtype=np.float64), QUANTILES)
    return {f"q{int(q * 100):02d}": round(float(v), 4) for q, v in zip(QUANTILES, qs, strict=True)}


def _rounded(values) -> list[float | None]:
    """JSON-ready floats (None for missing); Python's round on a list of floats, which is ten times faster
    than a NumPy scalar per value and keeps the shortest repr."""
    return [None if v != v else round(v, DECIMALS) for v in np.asarray(values, dtype=np.float64).tolist()]


def export_negatives(
    candidates: Candidates,
    settings: SelectionSettings,
    out_path: str,
    report_path: str,
    report_settings: dict,
    calibration: dict | None = None,
) -> dict:
    """Select negatives for every query with positives; write one JSON line per kept query (positives
    first, then negatives) and selection.json with drop counts and score distributions (and, under
    `selection: auto`, the calibration's choice)."""
    if calibration is not None:
        log.info("selection: %s", calibration["summary"])
    counts: Counter = Counter()
    names = ("positive_cosine", "negative_cosine", "positive_ce", "negative_ce", "negative_rank")
    dist = {name: array("d") for name in names}  # C doubles, not a Python float each
    by_source = np.zeros((2, len(candidates.source_names)), dtype=np.int64)  # candidates, negatives per source
    with (
        atomic_output(out_path) as tmp,
        open(tmp, "w", encoding="utf-8") as out,
        ProgressBar(total=len(candidates), desc="select", unit=" queries", mininterval=5) as bar,
    ):
        for query in candidates:
            bar.update()
            given = len(query.given_rows)  # listed first and counted towards num_negatives
            picked = candidates.select(query, settings)
            chosen, padded = picked.chosen, picked.padded
            counts["queries"] += 1
            counts["candidates"] += len(query.cand_rows)
            if query.cand_sources is not None:
                by_source[0] += query.cand_sources.sum(axis=0)
            counts["given_negatives"] += given
            for reason, n in picked.dropped.items():
                counts[f"dropped_{reason}"] += n
            if picked.short:
                counts["queries_short"] += 1
                counts["queries_dropped"] += not picked.written
                counts["padded"] += len(padded)
                counts["queries_short_after_padding"] += (
                    settings.short_queries == "pad" and given + len(chosen) + len(padded) < settings.num_negatives
                )
            if not picked.written:
                continue
            pad_rows = np.array([r for r, _ in padded], dtype=np.int64)
            neg_rows = np.r_[query.cand_rows[chosen], pad_rows]
            neg_cos = np.r_[query.cand_cos[chosen], [c for _, c in padded]]
            emb = candidates.corpus.take(np.r_[query.pos_rows, query.given_rows, neg_rows])
            ce = None
            if candidates.has_ce:
                neg_ce = list(query.cand_ce[chosen]) + [None] * len(padded)
                ce = _rounded(list(query.pos_ce) + list(query.given_ce) + neg_ce)
                dist["positive_ce"].frombytes(query.pos_ce.astype(np.float64).tobytes())
                dist["negative_ce"].frombytes(query.cand_ce[chosen].astype(np.float64).tobytes())
            sources = None
            if query.cand_sources is not None:
                returned = query.cand_sources[chosen]
                names = candidates.source_names
                sources = [[] for _ in range(len(query.pos_ids) + given)]
                sources += [[n for n, hit in zip(names, row, strict=True) if hit] for row in returned.tolist()]
                sources += [[] for _ in padded]
                by_source[1] += returned.sum(axis=0)
            record = NegativesRecord(
                query=query.query_id,
                docs=query.pos_ids
                + query.given_ids
                + [query.cand_ids[i] for i in chosen.tolist()]
                + candidates.doc_ids(pad_rows),
                doc_scores=[float(s) for s in query.pos_grades] + [0.0] * (given + len(neg_rows)),
                query_doc_cos=_rounded(np.r_[query.pos_cos, query.given_cos, neg_cos]),
                doc_doc_cos=_rounded((emb @ emb.T).ravel()),
                query_doc_ce=ce,
                doc_sources=sources,
            )
            out.write(record.to_json() + "\n")
            counts["queries_written"] += 1
            counts["negatives"] += len(neg_rows)
            dist["positive_cosine"].frombytes(query.pos_cos.astype(np.float64).tobytes())
            dist["negative_cosine"].frombytes(neg_cos.astype(np.float64).tobytes())
            dist["negative_rank"].frombytes(query.cand_ranks[chosen].astype(np.float64).tobytes())

    report = {
        "selection_score": candidates.score_name,
        "counts": {
            key: counts[key]
            for key in (
                "queries",
                "queries_written",
                "candidates",
                "negatives",
                "given_negatives",
                "queries_short",
                "queries_dropped",
                "padded",
                "queries_short_after_padding",
            )
        },
        "dropped": {name: counts[f"dropped_{name}"] for name in FILTERS if f"dropped_{name}" in counts},
        "distributions": {name: quantiles(np.frombuffer(v)) for name, v in dist.items() if len(v)},
        "settings": report_settings,
    }
    if candidates.source_names:  # a negative counts under every source that returned it
        report["sources"] = {
            name: {"candidates": int(c), "negatives": int(n)}
            for name, c, n in zip(candidates.source_names, *by_source, strict=True)
        }
    if calibration is not None:
        report["calibration"] = calibration
    write_json(report_path, report)
    if warning := no_negatives_warning(report):
        log.warning("%s", warning)
    log.info(
        "selected on %s: %d queries, %d candidates, %d negatives (and %d given); %d queries short of %d (%s: %d "
        "dropped, %d padded); dropped %s",
        candidates.score_name,
        counts["queries"],
        counts["candidates"],
        counts["negatives"],
        counts["given_negatives"],
        counts["queries_short"],
        settings.num_negatives,
        settings.short_queries,
        counts["queries_dropped"],
        counts["padded"],
        ", ".join(f"{k} {v}" for k, v in report["dropped"].items()),
    )
    return report
