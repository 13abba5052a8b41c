"""Rule audit: how many selected negatives are really positives, and how hard they are, for the configured
selection and for the anchors' strategies replayed on the same candidates, side by side; with
`audit_qrels`, also the embedding model's retrieval quality on them.

The judgments come from qrels the miner never saw (`audit_qrels`) or from positives hidden by
`audit_holdout`. A false negative is a selected negative that those judgments call relevant.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict

import numpy as np

from negflow.calibration import read_choice
from negflow.candidates import Candidates
from negflow.evaluate import CORPUS_CHUNK, evaluate_model
from negflow.files import write_json
from negflow.judgments import load_judgments, read_holdout, relevant_docs
from negflow.progress import ProgressBar
from negflow.selection import SelectionSettings, anchor_strategies
from negflow.store import load_table, read_manifest

log = logging.getLogger("negflow")


# the audit's names for the run's own selection: as configured, or chosen by `selection: auto`
OWN_STRATEGIES = ("negflow (configured)", "negflow (selection: auto)")


def own_strategy(report: dict) -> dict:
    """An audit report's figures for the run's own selection (fixed or `selection: auto`)."""
    return next(report["strategies"][name] for name in OWN_STRATEGIES if name in report["strategies"])


def audit_selection(
    candidates: Candidates,
    strategies: dict[str, SelectionSettings],
    relevant: dict[str, set[str]],
) -> dict[str, dict]:
    """Replay each strategy on every audited query (one with judgments); count false negatives and ranks."""
    stats = {name: {"negatives": 0, "false_negatives": 0, "ranks": [], "short": 0, "padded": 0} for name in strategies}
    # with several candidate sources: each strategy's negatives and false negatives by the source that
    # returned them (a negative two sources returned counts under both)
    by_source = {name: {s: [0, 0] for s in candidates.source_names} for name in strategies}
    audited = 0
    bar = ProgressBar(total=len(candidates), desc="replay", unit=" queries", mininterval=5)
    for query in candidates:
        bar.update()
        truth = relevant.get(query.query_id)
        if truth is None:
            continue
        audited += 1
        for name, s in strategies.items():
            picked = candidates.select(query, s)
            st = stats[name]
            st["short"] += picked.short
            if not picked.written:
                continue
            st["padded"] += len(picked.padded)
            chosen = [query.cand_ids[i] for i in picked.chosen.tolist()]
            chosen += candidates.doc_ids(np.array([r for r, _ in picked.padded], dtype=np.int64))
            st["negatives"] += len(chosen)
            st["false_negatives"] += sum(d in truth for d in chosen)
            st["ranks"] += query.cand_ranks[picked.chosen].tolist()
            if query.cand_sources is not None:
                false = np.array([query.cand_ids[i] in truth for i in picked.chosen.tolist()], dtype=bool)
                returned = query.cand_sources[picked.chosen]
                for j, source in enumerate(candidates.source_names):
                    by_source[name][source][0] += int(returned[:, j].sum())
                    by_source[name][source][1] += int((returned[:, j] & false).sum())
    bar.close()
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
        if candidates.source_names:
            report[name]["sources"] = {
                source: {
                    "negatives": n,
                    "false_negatives": f,
                    "false_negative_rate": round(f / n, 4) if n else None,
                }
                for source, (n, f) in by_source[name].items()
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


def audit(inputs: Mapping, settings: dict, batch: tuple[int, int | str], out_path: str) -> dict:
    """Rule audit: the judgments (audit_qrels as prepare_judgments stored them, else the hidden positives),
    every strategy replayed on the candidates, and with audit_qrels the model's retrieval quality on them;
    written to `out_path`. `inputs`: the rule's (those `Candidates.from_inputs` reads, plus `judgments`,
    `holdout` and `manifest`); `batch`: the model pass's batch size and token budget (its resources)."""
    if settings["audit_qrels"]:
        judged, query_texts = load_judgments(inputs["judgments"], "audit")
        source = {"audit_qrels": settings["audit_qrels"]}
    else:
        judged = read_holdout(inputs["holdout"])
        source = {"audit_holdout": f"{sum(map(len, judged.values()))} hidden positives of {len(judged)} queries"}
    candidates = Candidates.from_inputs(inputs, settings)
    selected, choice = read_choice(inputs, settings)
    name = OWN_STRATEGIES[0] if choice is None else OWN_STRATEGIES[1]
    strategies = anchor_strategies(selected, has_ce=candidates.has_ce, name=name)
    relevant = relevant_docs(judged, settings["min_positive_score"])
    report = {
        "judgments": source,
        "selection_score": candidates.score_name,
        **audit_selection(candidates, strategies, relevant),
    }
    log.info("false negatives and hardness on the same candidates:\n%s", format_table(report["strategies"]))
    if settings["audit_qrels"]:
        # torch, imported only when there is a retrieval pass to run
        from negflow.models import BatchLimits, compute_dtype, configured_embedding_model, model_pass, pick_device

        device = pick_device(settings["device"])
        dtype = compute_dtype(settings["embedding_dtype"], device)
        report["retrieval"] = evaluate_model(
            configured_embedding_model(settings, device),
            query_texts,
            judged,
            candidates.corpus.chunks(CORPUS_CHUNK),
            load_table(inputs["corpus_dir"], ["id"])["id"].to_pylist(),
            read_manifest(inputs["manifest"]).query_prompt,
            settings["min_positive_score"],
            BatchLimits(*batch),
            device,
            dtype,
        ) | {"model_pass": model_pass(device, dtype)}
        log.info(
            "retrieval quality of %s on %s: %s", settings["embedding"], settings["audit_qrels"], report["retrieval"]
        )
    write_json(out_path, report)
    return report
