"""Rule audit: how many selected negatives are really positives, and how hard they are, for the configured
selection and for the anchors' strategies replayed on the same candidates, side by side.

The judgments come from qrels the miner never saw (`audit_qrels`) or from positives hidden by
`audit_holdout`. A false negative is a selected negative that those judgments call relevant.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from functools import partial

import numpy as np

from negflow.candidates import MinedCandidates, query_noise
from negflow.files import write_json
from negflow.selection import SelectionSettings, select_query

log = logging.getLogger("negflow")


def anchor_strategies(configured: SelectionSettings, has_ce: bool) -> dict[str, SelectionSettings]:
    """The configured selection plus what the tools negflow replaces do by default, with the same
    number of negatives and seed. Exact-text duplicates of a positive go in all of them, as they do in
    the originals."""
    plain = replace(
        configured,
        range_min=0,
        range_max=None,
        max_score=None,
        min_score=None,
        absolute_margin=None,
        relative_margin=None,
        ce_max=None,
        positive_doc_margin=None,
        dup_threshold=None,
        sampling="top",
        short_queries="keep",
    )
    strategies = {
        "negflow (configured)": configured,
        "sentence-transformers top": plain,
        "sentence-transformers / NV-Retriever relative_margin=0.05 top": replace(plain, relative_margin=0.05),
        "FlagEmbedding ranks 10-210 random": replace(plain, range_min=10, range_max=210, sampling="random"),
        "SimANS a=50 b=-0.1": replace(plain, sampling="simans", simans_a=50.0, simans_b=-0.1),
    }
    if has_ce:
        strategies["RocketQA ce_max=0.1 top"] = replace(plain, ce_max=0.1)
        strategies["negminer CE margin 0.05 + dup 0.95 top"] = replace(plain, absolute_margin=0.05, dup_threshold=0.95)
    return strategies


def audit_selection(
    mined: MinedCandidates,
    strategies: dict[str, SelectionSettings],
    relevant: dict[str, set[str]],
) -> dict[str, dict]:
    """Replay each strategy on every audited query (one with judgments); count false negatives and ranks."""
    stats = {name: {"negatives": 0, "false_negatives": 0, "ranks": [], "short": 0, "padded": 0} for name in strategies}
    audited = 0
    for query in mined:
        truth = relevant.get(query.query_id)
        if truth is None:
            continue
        audited += 1
        scores = query.scores(mined.score_name)
        given = len(query.given_rows)
        for name, s in strategies.items():
            picked = select_query(
                scores,
                s,
                query_noise(s, query),
                given,
                partial(mined.pad, query),
            )
            st = stats[name]
            st["short"] += picked.short
            if not picked.written:
                continue
            st["padded"] += len(picked.padded)
            chosen = [query.cand_ids[i] for i in picked.chosen.tolist()]
            chosen += mined.doc_ids(np.array([r for r, _ in picked.padded], dtype=np.int64))
            st["negatives"] += len(chosen)
            st["false_negatives"] += sum(d in truth for d in chosen)
            st["ranks"] += query.cand_ranks[picked.chosen].tolist()
    report = {}
    for name, st in stats.items():
        ranks = np.asarray(st.pop("ranks"))
        report[name] = {
            **st,
            "false_negative_rate": round(st["false_negatives"] / st["negatives"], 4) if st["negatives"] else None,
            "median_rank": float(np.median(ranks)) if len(ranks) else None,
            "mean_rank": round(float(ranks.mean()), 2) if len(ranks) else None,
            "settings": asdict(strategies[name]),
        }
    log.info("audited %d queries", audited)
    return {"queries_audited": audited, "strategies": report}


def format_table(strategies: dict[str, dict]) -> str:
    """The side-by-side view the log (and the benchmark) prints."""
    lines = [f"{'strategy':62s} {'FN rate':>8s} {'median rank':>12s} {'negatives':>10s} {'short':>6s}"]
    for name, r in strategies.items():
        rate = "-" if r["false_negative_rate"] is None else f"{100 * r['false_negative_rate']:.1f}%"
        rank = "-" if r["median_rank"] is None else f"{r['median_rank']:.1f}"
        lines.append(f"{name:62s} {rate:>8s} {rank:>12s} {r['negatives']:>10d} {r['short']:>6d}")
    return "\n".join(lines)


def write_report(report: dict, out_path: str) -> None:
    write_json(out_path, report)
