"""The run report's figures and tables (rule plot_report): what a user checks before training on the
negatives - how many were found, what each filter dropped, how their scores sit against the positives',
where in the ranking they came from, and a few examples to read."""

from __future__ import annotations

import html
import json
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negflow.calibration import describe, within_budget
from negflow.files import SortedRows, atomic_output, open_parquet
from negflow.negatives import NegativesRecord, read_negatives
from negflow.selection import no_negatives_warning
from negflow.sources import fused_sources
from negflow.store import load_table

EXAMPLE_QUERIES = 5
EXAMPLE_NEGATIVES = 3
TEXT_WIDTH = 180


COSINE_GRID = np.linspace(-1.0, 1.0, 2001)  # every candidate's cosine is counted on this grid, not kept
RANK_BLOCK = 4096  # negatives.jsonl records whose ranks are looked up at once


@dataclass
class ScoreSets:
    """Scores of the exported positives and negatives, and how many retrieved candidates (cosine only) fall
    in each COSINE_GRID bin."""

    positive_cosine: np.ndarray
    negative_cosine: np.ndarray
    candidate_counts: np.ndarray
    positive_ce: np.ndarray | None
    negative_ce: np.ndarray | None
    negative_cosine_by_source: dict[str, np.ndarray] = field(default_factory=dict)  # fused runs only


@dataclass
class ExportScan:
    """What the report needs from negatives.jsonl, gathered in one pass so the records themselves (each with
    an n x n doc_doc_cos matrix) are never all in memory."""

    queries: int = 0
    examples: list[NegativesRecord] = field(default_factory=list)
    scores: dict[str, array] = field(default_factory=lambda: {k: array("d") for k in SCORE_KEYS})
    has_ce: bool = False
    ranks: array = field(default_factory=lambda: array("q"))  # of the negatives that were candidates
    source_cosines: dict[str, array] = field(
        default_factory=dict
    )  # negatives' cosines by the sources that returned them


SCORE_KEYS = ("positive_cosine", "negative_cosine", "positive_ce", "negative_ce")


def scan_negatives(records: Iterable[NegativesRecord], candidates_path: str | Path, query_ids: pa.Array) -> ExportScan:
    """One pass over the records (in query order, as export writes them) and, alongside, over the candidates
    file: each block of records' negatives are joined with their queries' candidates for their ranks, so
    neither file is ever whole in memory. `query_ids`: the prepared queries' ids, by row."""
    scan = ExportScan()
    candidates = SortedRows(str(candidates_path), "query_row", ["query_row", "doc_id", "rank"])
    block: list[tuple[str, list[str]]] = []
    for r in records:
        scan.queries += 1
        if len(scan.examples) < EXAMPLE_QUERIES:
            scan.examples.append(r)
        n_pos, cos = r.n_positives, r.query_doc_cos
        scan.scores["positive_cosine"].extend(cos[:n_pos])  # a record's slice at once, no loop per document
        scan.scores["negative_cosine"].extend(cos[n_pos:])
        if r.query_doc_ce is not None:
            if len(r.query_doc_ce) != len(cos):
                raise ValueError(f"query {r.query}: {len(r.query_doc_ce)} CE scores for {len(cos)} documents")
            scan.has_ce = True  # a padded negative has no CE score (None)
            scan.scores["positive_ce"].extend(c for c in r.query_doc_ce[:n_pos] if c is not None)
            scan.scores["negative_ce"].extend(c for c in r.query_doc_ce[n_pos:] if c is not None)
        if r.doc_sources:  # a fused run's: each negative's cosine under every source that returned it
            for found, c in zip(r.doc_sources[n_pos:], cos[n_pos:], strict=True):
                for source in found:
                    scan.source_cosines.setdefault(source, array("d")).append(c)
        block.append((r.query, r.negatives()))
        if len(block) == RANK_BLOCK:
            _add_ranks(scan, block, candidates, query_ids)
            block = []
    _add_ranks(scan, block, candidates, query_ids)
    return scan


def _add_ranks(scan: ExportScan, block: list[tuple[str, list[str]]], candidates: SortedRows, query_ids) -> None:
    if not block:
        return
    rows = pc.index_in(pa.array([q for q, _ in block], pa.string()), value_set=query_ids).to_numpy(zero_copy_only=False)
    negatives = pa.table(
        {
            "query_row": pa.array(np.repeat(rows, [len(docs) for _, docs in block]), pa.int32()),
            "doc_id": pa.array([d for _, docs in block for d in docs], pa.string()),
        }
    )
    ranked = candidates.below(int(rows.max()) + 1)
    joined = negatives.join(ranked, ["query_row", "doc_id"], join_type="inner")
    scan.ranks.extend(joined["rank"].to_numpy().tolist())


def candidate_counts(candidates_path: str | Path) -> np.ndarray:
    """How many candidates' cosines fall in each COSINE_GRID bin, read a batch at a time."""
    counts = np.zeros(len(COSINE_GRID) - 1, dtype=np.int64)
    for batch in open_parquet(candidates_path).iter_batches(columns=["cosine"], batch_size=1 << 20):
        counts += np.histogram(batch.column(0).to_numpy(), bins=COSINE_GRID)[0]
    return counts


def score_sets(scan: ExportScan, candidates_path: str | Path) -> ScoreSets:
    def values(key: str) -> np.ndarray:
        return np.frombuffer(scan.scores[key], dtype=np.float64)

    return ScoreSets(
        values("positive_cosine"),
        values("negative_cosine"),
        candidate_counts(candidates_path),
        values("positive_ce") if scan.has_ce else None,
        values("negative_ce") if scan.has_ce else None,
        negative_cosines_by_source(scan, candidates_path),
    )


def negative_cosines_by_source(scan: ExportScan, candidates_path: str | Path) -> dict[str, np.ndarray]:
    """The cosines of the negatives each listed source returned, in the listed order, a source that returned
    none included; {} unless the candidates are fused from two sources or more."""
    names = fused_sources(open_parquet(candidates_path).schema_arrow)
    if len(names) < 2:
        return {}
    return {name: np.frombuffer(scan.source_cosines.get(name, array("d")), dtype=np.float64) for name in names}


def negative_ranks(scan: ExportScan) -> np.ndarray:
    """Retrieval rank (1 = most similar non-positive) of every exported negative, in increasing order;
    padded negatives, which come from outside the candidate list, have none."""
    return np.sort(np.frombuffer(scan.ranks, dtype=np.int64))


def _save_figure(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=110, bbox_inches="tight")
    plt.close(fig)


def _figure(panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, panels, figsize=(6.4 * panels, 4.2), squeeze=False)


def plot_scores(scores: ScoreSets, path: str | Path, dataset: str) -> None:
    """Histograms of positive vs negative scores: cosine (with all candidates for context) and, when a
    cross-encoder scored the pairs, CE. Negatives piled against the positives are false-negative risk. With
    several candidate sources, two more panels: the negatives each source returned (one that two returned
    counts under both) and their cosines, so a source that brings only easy or only near-positive documents
    shows."""
    panels = [("cosine", scores.positive_cosine, scores.negative_cosine, scores.candidate_counts)]
    if scores.positive_ce is not None:
        panels.append(("cross-encoder score", scores.positive_ce, scores.negative_ce, None))
    by_source = scores.negative_cosine_by_source
    fig, axes = _figure(len(panels) + 2 * bool(by_source))
    centers = (COSINE_GRID[1:] + COSINE_GRID[:-1]) / 2
    for ax, (name, pos, neg, cand) in zip(axes[0][: len(panels)], panels, strict=True):
        filled = centers[cand > 0] if cand is not None else np.empty(0)
        values = [v for v in (pos, neg, filled) if len(v)]
        lo = min(float(v.min()) for v in values) if values else 0.0
        hi = max(float(v.max()) for v in values) if values else 1.0
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
        if cand is not None and cand.sum():
            label = f"all candidates ({int(cand.sum()):,})"
            ax.hist(centers, bins=bins, weights=cand, density=True, color="0.8", label=label)
        if len(neg):
            ax.hist(neg, bins=bins, density=True, alpha=0.6, color="tab:red", label=f"negatives ({len(neg):,})")
        if len(pos):
            ax.hist(pos, bins=bins, density=True, alpha=0.6, color="tab:blue", label=f"positives ({len(pos):,})")
        ax.set_xlabel(name)
        ax.set_ylabel("density")
        ax.set_title(f"{dataset}: query-document {name}")
        ax.legend()
    if by_source:
        _plot_sources(axes[0][len(panels)], axes[0][len(panels) + 1], by_source, dataset)
    _save_figure(fig, path)


def _plot_sources(counts_ax, cosines_ax, by_source: dict[str, np.ndarray], dataset: str) -> None:
    names = list(by_source)
    counts_ax.barh(names, [len(by_source[n]) for n in names], color="tab:red", alpha=0.6)
    counts_ax.invert_yaxis()
    counts_ax.set_xlabel("negatives returned by the source")
    counts_ax.set_title(f"{dataset}: negatives per source")
    values = [v for v in by_source.values() if len(v)]
    lo = min(float(v.min()) for v in values) if values else 0.0
    hi = max(float(v.max()) for v in values) if values else 1.0
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
    for name in names:
        if len(by_source[name]):
            cosines_ax.hist(by_source[name], bins=bins, density=True, histtype="step", label=name)
    cosines_ax.set_xlabel("cosine")
    cosines_ax.set_ylabel("density")
    cosines_ax.set_title(f"{dataset}: negatives' cosine per source")
    cosines_ax.legend()


def plot_ranks(ranks: np.ndarray, candidates: int, path: str | Path, dataset: str) -> None:
    """Where in the retrieval ranking the negatives came from: all at the top means no margin against
    false negatives, a flat spread means sampling diluted the hardness."""
    fig, axes = _figure(1)
    ax = axes[0][0]
    top = max(candidates, int(ranks.max()) if len(ranks) else 1)
    ax.hist(ranks, bins=np.arange(0.5, top + 1.5, max(1, top // 50)), color="tab:red")
    ax.set_xlabel("retrieval rank among candidates (1 = most similar non-positive)")
    ax.set_ylabel("negatives")
    median = f", median {np.median(ranks):g}" if len(ranks) else ""
    ax.set_title(f"{dataset}: rank of the {len(ranks):,} selected negatives{median}")
    _save_figure(fig, path)


def plot_calibration(calibration: dict, path: str | Path, dataset: str) -> None:
    """selection: auto's picture: each grid setting's estimated false-negative share (with its 90% interval)
    against its hardness, the budget as a line, the chosen setting marked, and the fixed strategies
    (negflow's, sentence-transformers', FlagEmbedding's) on the same axes."""
    fig, axes = _figure(1)
    ax = axes[0][0]

    def points(rows: dict) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        kept = [(n, r) for n, r in rows.items() if r["fn_share"] is not None and r["median_rank"] is not None]
        x = np.array([r["median_rank"] for _, r in kept], dtype=np.float64)
        y = np.array([r["fn_share"]["estimate"] for _, r in kept], dtype=np.float64)
        hi = np.array([r["fn_share"]["interval"][1] for _, r in kept], dtype=np.float64)
        return [n for n, _ in kept], x, y, hi

    _, x, y, hi = points(calibration["grid"])
    ax.errorbar(x, y, yerr=[np.zeros_like(y), np.maximum(hi - y, 0)], fmt="o", ms=3, color="0.6", alpha=0.6, lw=0.6)
    ax.scatter([], [], s=9, color="0.6", label=f"grid settings ({len(x)})")
    names, rx, ry, _ = points(calibration["references"])
    for name, xi, yi, marker in zip(names, rx, ry, "sD^v", strict=False):
        ax.scatter([xi], [yi], marker=marker, s=45, label=name, zorder=3)
    ax.axhline(calibration["budget"], color="tab:red", ls="--", lw=1, label=f"budget {calibration['budget']:g}")
    choice = calibration["choice"]
    if not choice["fallback"]:
        row = calibration["grid"][choice["name"]]
        ax.scatter([row["median_rank"]], [row["fn_share"]["estimate"]], marker="*", s=220, color="tab:green")
        ax.scatter([], [], marker="*", s=90, color="tab:green", label=f"chosen: {choice['name']}")
    ax.set_xlabel("median retrieval rank of the negatives (lower = harder)")
    ax.set_ylabel("estimated false-negative share")
    if choice["fallback"]:
        verdict = "kept the configured selection"
    else:
        verdict = "auto's choice" if within_budget(calibration) else "auto's choice, none shown within the budget"
    ax.set_title(f"{dataset}: false negatives against hardness ({verdict})")
    ax.legend(fontsize=7)
    _save_figure(fig, path)


def _table(rows: list[tuple], header: tuple) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = (
    "<style>body{font-family:sans-serif;font-size:14px;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f2f2f2}"
    "td.n{text-align:right}</style>"
)


def _page(title: str, body: str) -> str:
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title>{STYLE}'
    return f"<!DOCTYPE html><html><head>{head}</head><body>{body}</body></html>\n"


def write_html(path: str | Path, title: str, body: str) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(_page(title, body), encoding="utf-8")


def summary_html(selection: dict, documents: int, dataset: str) -> str:
    """Counts of the run and the drops per selection filter, from selection.json."""
    counts = selection["counts"]
    rows = [
        ("documents", documents),
        ("queries with positives", counts["queries"]),
        ("queries written", counts["queries_written"]),
        ("candidates retrieved", counts["candidates"]),
        ("negatives selected", counts["negatives"]),
        ("queries short of num_negatives", counts["queries_short"]),
        ("queries dropped (short_queries: drop)", counts["queries_dropped"]),
        ("negatives padded (short_queries: pad)", counts["padded"]),
    ]
    drops = list(selection["dropped"].items())
    n_cand = max(1, counts["candidates"])
    sources = selection.get("sources", {})
    by_source = ""
    if sources:  # candidate_sources other than the dense search alone
        by_source = (
            "<h3>candidates and negatives per source (one two sources returned counts under both)</h3>"
            + _table(
                [
                    (
                        html.escape(name),
                        f"{v['candidates']:,}",
                        f"{v['negatives']:,}",
                        f"{100 * v['negatives'] / max(1, counts['negatives']):.1f}%",
                    )
                    for name, v in sources.items()
                ],
                ("source", "candidates", "negatives", "of negatives"),
            )
        )
    warning = no_negatives_warning(selection)
    calibration = selection.get("calibration")
    return (
        (f'<p style="color:#a00"><b>Warning:</b> {html.escape(warning)}</p>' if warning else "")
        + (f"<p><b>selection: auto</b> - {html.escape(calibration['summary'])}</p>" if calibration else "")
        + f"<h3>{html.escape(dataset)}: counts (selected on {html.escape(selection['selection_score'])})</h3>"
        + _table([(html.escape(k), f"{v:,}") for k, v in rows], ("what", "count"))
        + "<h3>candidates dropped, per filter (in the order they apply)</h3>"
        + _table(
            [(html.escape(k), f"{v:,}", f"{100 * v / n_cand:.1f}%") for k, v in drops],
            ("filter", "dropped", "of candidates"),
        )
        + by_source
    )


def shorten(text: str, width: int = TEXT_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _doc_cell(record: NegativesRecord, i: int, texts: dict[str, str]) -> str:
    score = f"cos {record.query_doc_cos[i]:.3f}"
    if record.query_doc_ce and record.query_doc_ce[i] is not None:
        score += f", CE {record.query_doc_ce[i]:.3f}"
    if record.doc_sources and record.doc_sources[i]:
        score += ", from " + " + ".join(record.doc_sources[i])
    doc = record.docs[i]
    return f"<b>{html.escape(doc)}</b> ({score})<br>{html.escape(shorten(texts.get(doc, '')))}"


def examples_html(records: list[NegativesRecord], texts: dict[str, str], queries: dict[str, str], dataset: str) -> str:
    """The first few queries with their first positive and first negatives, texts shortened, scores beside."""
    rows = []
    for r in records[:EXAMPLE_QUERIES]:
        n_pos = r.n_positives
        negatives = range(n_pos, min(len(r.docs), n_pos + EXAMPLE_NEGATIVES))
        rows.append(
            (
                f"<b>{html.escape(r.query)}</b><br>{html.escape(shorten(queries.get(r.query, '')))}",
                _doc_cell(r, 0, texts) if n_pos else "",
                "<br><br>".join(_doc_cell(r, i, texts) for i in negatives)
                or "<i>none: every candidate was filtered out</i>",
            )
        )
    return f"<h3>{html.escape(dataset)}: example queries</h3>" + _table(
        rows, ("query", "positive (first)", f"negatives (first {EXAMPLE_NEGATIVES})")
    )


def texts_of(dataset_dir: str | Path, ids: set[str]) -> dict[str, str]:
    table = load_table(dataset_dir, ["id", "text"])
    table = table.filter(pc.is_in(table["id"], value_set=pa.array(sorted(ids), pa.string())))
    return dict(zip(table["id"].to_pylist(), table["text"].to_pylist(), strict=True))


def build_report(
    dataset: str,
    negatives_path: str,
    selection_path: str,
    candidates_path: str,
    corpus_dir: str,
    queries_dir: str,
    candidates: int,
    out_summary: str,
    out_scores: str,
    out_ranks: str,
    out_examples: str,
) -> dict[str, int]:
    scan = scan_negatives(read_negatives(negatives_path), candidates_path, load_table(queries_dir, ["id"])["id"])
    selection = json.loads(Path(selection_path).read_text(encoding="utf-8"))
    documents = load_table(corpus_dir, ["id"]).num_rows
    write_html(out_summary, f"{dataset}: counts", summary_html(selection, documents, dataset))
    scores = score_sets(scan, candidates_path)
    plot_scores(scores, out_scores, dataset)
    ranks = negative_ranks(scan)
    plot_ranks(ranks, candidates, out_ranks, dataset)
    doc_ids = {d for r in scan.examples for d in r.docs}
    body = examples_html(
        scan.examples,
        texts_of(corpus_dir, doc_ids),
        texts_of(queries_dir, {r.query for r in scan.examples}),
        dataset,
    )
    write_html(out_examples, f"{dataset}: examples", body)
    return {"queries": scan.queries, "negatives": int(len(scores.negative_cosine)), "ranked_negatives": len(ranks)}


def calibration_report(calibration_path: str, out_path: str, dataset: str) -> dict[str, int]:
    """Rule plot_calibration: calibration.json drawn (`plot_calibration`)."""
    calibration = json.loads(Path(calibration_path).read_text(encoding="utf-8"))
    plot_calibration(calibration, out_path, dataset)
    return {"settings": len(calibration["grid"]), "fallback": int(calibration["choice"]["fallback"])}


def candidate_overlap(
    previous: str | Path, current: str | Path, block_queries: int = 65_536, batch_rows: int = 262_144
) -> float | None:
    """The share of a round's (query, document) candidates that the round before also had (None when it has
    none): how much re-mining with the trained model changed what the search returns. Both tables are
    sorted by query, so they are joined a block of queries at a time (memory: a block, not two rounds'
    tables; `batch_rows`: the rows read at once)."""
    columns = ["query_row", "doc_row"]
    now = SortedRows(str(current), "query_row", columns, batch_rows)
    before = SortedRows(str(previous), "query_row", columns, batch_rows)
    rows = kept = 0
    stop = block_queries
    while True:
        block = now.below(stop)
        rows += block.num_rows
        kept += block.join(before.below(stop), columns, join_type="inner").num_rows
        if now.exhausted:
            break
        stop += block_queries
    return kept / rows if rows else None


def calibration_estimate(calibration_path: str | Path) -> dict:
    """What `selection: auto` estimated for the setting it chose: the false-negative share with its 90%
    interval, or None where the evidence was too thin to choose (the configured selection was kept)."""
    calibration = json.loads(Path(calibration_path).read_text(encoding="utf-8"))
    choice = calibration["choice"]
    row = None if choice["fallback"] else calibration["grid"][choice["name"]]["fn_share"]
    return {"false_negative_estimate": row, "calibration": describe(calibration)}


def summarize_rounds(
    candidates: list[str], selections: list[str], audits: list[str], calibrations: list[str]
) -> list[dict]:
    """Per round (the files in round order; `audits` empty where no audit runs, `calibrations` empty without
    `selection: auto`): its negatives, queries left short, median rank and cosine of the negatives, the
    share of its candidates the round before had, with a calibration its false-negative estimate, and with
    an audit the false-negative share of its negatives and its model's nDCG@10."""
    rows = []
    for r, (table, selection_path) in enumerate(zip(candidates, selections, strict=True), start=1):
        selection = json.loads(Path(selection_path).read_text(encoding="utf-8"))
        dist = selection["distributions"]
        row = {
            "round": r,
            "negatives": selection["counts"]["negatives"],
            "queries_short": selection["counts"]["queries_short"],
            "median_rank": (dist.get("negative_rank") or {}).get("q50"),
            "median_cosine": (dist.get("negative_cosine") or {}).get("q50"),
            "candidates_in_previous_round": candidate_overlap(candidates[r - 2], table) if r > 1 else None,
        }
        if calibrations:
            row |= calibration_estimate(calibrations[r - 1])
        if audits:
            from negflow.audit import own_strategy

            audit = json.loads(Path(audits[r - 1]).read_text(encoding="utf-8"))
            mine = own_strategy(audit)
            row["false_negative_rate"] = mine["false_negative_rate"]
            row["ndcg@10"] = (audit.get("retrieval") or {}).get("ndcg@10")
        rows.append(row)
    return rows


def plot_rounds(rows: list[dict], path: str | Path, dataset: str) -> None:
    """One figure across rounds: the negatives' median rank, the share of candidates kept from the round
    before, the false-negative share (the audit's, and the calibration's estimate with its interval) and
    nDCG@10, each where the run has it."""
    estimates = [(row["round"], row["false_negative_estimate"]) for row in rows if row.get("false_negative_estimate")]
    panels = [
        ("median_rank", "median rank of the negatives"),
        ("candidates_in_previous_round", "candidates the round before had"),
    ]
    if estimates or any(row.get("false_negative_rate") is not None for row in rows):
        panels.append(("false_negative_rate", "false negatives"))
    if any(row.get("ndcg@10") is not None for row in rows):
        panels.append(("ndcg@10", "nDCG@10"))
    fig, axes = _figure(len(panels))
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        points = [(row["round"], row[key]) for row in rows if row.get(key) is not None]
        label = "audit" if estimates and key == "false_negative_rate" and points else None
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        if key == "false_negative_rate" and estimates:
            x = [r for r, _ in estimates]
            y = [e["estimate"] for _, e in estimates]
            low = [e["estimate"] - e["interval"][0] for _, e in estimates]
            high = [e["interval"][1] - e["estimate"] for _, e in estimates]
            ax.errorbar(x, y, yerr=[low, high], marker="s", capsize=3, label="calibration estimate (90%)")
            ax.legend(fontsize=7)
        ax.set_xticks([row["round"] for row in rows])
        ax.set_xlabel("round")
        ax.set_title(f"{dataset}: {title}")
    _save_figure(fig, path)
