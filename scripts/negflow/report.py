"""The run report's figures and tables (rule plot_report): what a user checks before training on the
negatives - how many were found, what each filter dropped, how their scores sit against the positives',
where in the ranking they came from, and a few examples to read."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from negflow.files import atomic_output
from negflow.prepare import load_table

EXAMPLE_QUERIES = 5
EXAMPLE_NEGATIVES = 3
TEXT_WIDTH = 180


@dataclass
class ScoreSets:
    """Scores of the exported positives and negatives, and of every retrieved candidate (cosine only)."""

    positive_cosine: np.ndarray
    negative_cosine: np.ndarray
    candidate_cosine: np.ndarray
    positive_ce: np.ndarray | None
    negative_ce: np.ndarray | None


def read_negatives(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score_sets(records: list[dict], mined_path: str | Path) -> ScoreSets:
    def split(key: str) -> tuple[list[float], list[float]]:
        pos, neg = [], []
        for r in records:
            for grade, score in zip(r["doc_scores"], r[key], strict=True):
                if score is not None:
                    (pos if grade > 0 else neg).append(score)
        return pos, neg

    pos_cos, neg_cos = split("query_doc_cos")
    has_ce = any("query_doc_ce" in r for r in records)
    pos_ce, neg_ce = split("query_doc_ce") if has_ce else (None, None)
    candidates = pq.read_table(mined_path, columns=["cosine"])["cosine"].to_numpy()
    as_array = np.asarray
    return ScoreSets(
        as_array(pos_cos),
        as_array(neg_cos),
        candidates,
        None if pos_ce is None else as_array(pos_ce),
        None if neg_ce is None else as_array(neg_ce),
    )


def negative_ranks(records: list[dict], mined_path: str | Path) -> np.ndarray:
    """Retrieval rank (1 = most similar non-positive) of every exported negative; padded negatives, which
    come from outside the candidate list, have none."""
    table = pq.read_table(mined_path, columns=["query_id", "doc_id", "rank"])
    rank_of = dict(
        zip(
            zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True),
            table["rank"].to_pylist(),
            strict=True,
        )
    )
    ranks = [
        rank_of[(r["query"], doc)]
        for r in records
        for doc, grade in zip(r["docs"], r["doc_scores"], strict=True)
        if grade == 0 and (r["query"], doc) in rank_of
    ]
    return np.asarray(ranks, dtype=np.int64)


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
    cross-encoder scored the pairs, CE. Negatives piled against the positives are false-negative risk."""
    panels = [("cosine", scores.positive_cosine, scores.negative_cosine, scores.candidate_cosine)]
    if scores.positive_ce is not None:
        panels.append(("cross-encoder score", scores.positive_ce, scores.negative_ce, None))
    fig, axes = _figure(len(panels))
    for ax, (name, pos, neg, cand) in zip(axes[0], panels, strict=True):
        values = [v for v in (pos, neg, cand) if v is not None and len(v)]
        lo = min(float(v.min()) for v in values) if values else 0.0
        hi = max(float(v.max()) for v in values) if values else 1.0
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
        if cand is not None and len(cand):
            ax.hist(cand, bins=bins, density=True, color="0.8", label=f"all candidates ({len(cand):,})")
        if len(neg):
            ax.hist(neg, bins=bins, density=True, alpha=0.6, color="tab:red", label=f"negatives ({len(neg):,})")
        if len(pos):
            ax.hist(pos, bins=bins, density=True, alpha=0.6, color="tab:blue", label=f"positives ({len(pos):,})")
        ax.set_xlabel(name)
        ax.set_ylabel("density")
        ax.set_title(f"{dataset}: query-document {name}")
        ax.legend()
    _save_figure(fig, path)


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
    return (
        f"<h3>{html.escape(dataset)}: counts (selected on {html.escape(selection['selection_score'])})</h3>"
        + _table([(html.escape(k), f"{v:,}") for k, v in rows], ("what", "count"))
        + "<h3>candidates dropped, per filter (in the order they apply)</h3>"
        + _table(
            [(html.escape(k), f"{v:,}", f"{100 * v / n_cand:.1f}%") for k, v in drops],
            ("filter", "dropped", "of candidates"),
        )
    )


def shorten(text: str, width: int = TEXT_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _doc_cell(record: dict, i: int, texts: dict[str, str]) -> str:
    score = f"cos {record['query_doc_cos'][i]:.3f}"
    if record.get("query_doc_ce") and record["query_doc_ce"][i] is not None:
        score += f", CE {record['query_doc_ce'][i]:.3f}"
    doc = record["docs"][i]
    return f"<b>{html.escape(doc)}</b> ({score})<br>{html.escape(shorten(texts.get(doc, '')))}"


def examples_html(records: list[dict], texts: dict[str, str], queries: dict[str, str], dataset: str) -> str:
    """The first few queries with their first positive and first negatives, texts shortened, scores beside."""
    rows = []
    for r in records[:EXAMPLE_QUERIES]:
        positives = [i for i, g in enumerate(r["doc_scores"]) if g > 0]
        negatives = [i for i, g in enumerate(r["doc_scores"]) if g == 0][:EXAMPLE_NEGATIVES]
        rows.append(
            (
                f"<b>{html.escape(r['query'])}</b><br>{html.escape(shorten(queries.get(r['query'], '')))}",
                _doc_cell(r, positives[0], texts) if positives else "",
                "<br><br>".join(_doc_cell(r, i, texts) for i in negatives)
                or "<i>none: every candidate was filtered out</i>",
            )
        )
    return f"<h3>{html.escape(dataset)}: example queries</h3>" + _table(
        rows, ("query", "positive (first)", f"negatives (first {EXAMPLE_NEGATIVES})")
    )


def texts_of(dataset_dir: str | Path, ids: set[str]) -> dict[str, str]:
    table = load_table(dataset_dir, ["id", "text"])
    return {i: t for i, t in zip(table["id"].to_pylist(), table["text"].to_pylist(), strict=True) if i in ids}


def build_report(
    dataset: str,
    negatives_path: str,
    selection_path: str,
    mined_path: str,
    corpus_dir: str,
    queries_dir: str,
    candidates: int,
    out_summary: str,
    out_scores: str,
    out_ranks: str,
    out_examples: str,
) -> dict[str, int]:
    records = read_negatives(negatives_path)
    selection = json.loads(Path(selection_path).read_text(encoding="utf-8"))
    documents = load_table(corpus_dir, ["id"]).num_rows
    write_html(out_summary, f"{dataset}: counts", summary_html(selection, documents, dataset))
    scores = score_sets(records, mined_path)
    plot_scores(scores, out_scores, dataset)
    ranks = negative_ranks(records, mined_path)
    plot_ranks(ranks, candidates, out_ranks, dataset)
    shown = records[:EXAMPLE_QUERIES]
    doc_ids = {d for r in shown for d in r["docs"]}
    body = examples_html(
        records, texts_of(corpus_dir, doc_ids), texts_of(queries_dir, {r["query"] for r in shown}), dataset
    )
    write_html(out_examples, f"{dataset}: examples", body)
    return {"queries": len(records), "negatives": int(len(scores.negative_cosine)), "ranked_negatives": len(ranks)}
