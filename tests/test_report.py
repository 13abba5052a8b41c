"""The run report's data: which scores count as positive or negative, where ranks come from, text shortening."""

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negflow.negatives import NegativesRecord
from negflow.report import examples_html, negative_ranks, scan_negatives, score_sets, shorten

RECORDS = [
    NegativesRecord(
        query="q1",
        docs=["p1", "n1", "n2", "pad"],
        doc_scores=[2.0, 0.0, 0.0, 0.0],
        query_doc_cos=[0.9, 0.5, 0.4, 0.1],
        doc_doc_cos=[],
        query_doc_ce=[3.0, -1.0, -2.0, None],
    ),
    NegativesRecord(query="q2", docs=["p2"], doc_scores=[1.0], query_doc_cos=[0.8], doc_doc_cos=[], query_doc_ce=[2.5]),
]


def _candidates_file(tmp_path):
    path = tmp_path / "candidates.parquet"
    pq.write_table(
        pa.table(
            {
                "query_id": ["q1", "q1", "q1", "q2"],
                "query_row": pa.array([0, 0, 0, 1], pa.int32()),
                "doc_id": ["x", "n1", "n2", "y"],
                "rank": pa.array([1, 2, 7, 1], pa.int32()),
                "cosine": pa.array([0.6, 0.5, 0.4, 0.7], pa.float32()),
            }
        ),
        path,
    )
    return path


QUERY_IDS = pa.array(["q1", "q2"])


def test_scores_split_by_grade_and_padded_negatives_have_no_rank(tmp_path):
    candidates = _candidates_file(tmp_path)
    scan = scan_negatives(RECORDS, candidates, QUERY_IDS)
    scores = score_sets(scan, candidates)
    np.testing.assert_allclose(scores.positive_cosine, [0.9, 0.8])
    np.testing.assert_allclose(scores.negative_cosine, [0.5, 0.4, 0.1])
    np.testing.assert_allclose(scores.positive_ce, [3.0, 2.5])
    np.testing.assert_allclose(scores.negative_ce, [-1.0, -2.0])  # the padded negative was never scored
    assert scores.candidate_counts.sum() == 4  # counted on the cosine grid: 0.4, 0.5, 0.6, 0.7
    grid = np.linspace(-1, 1, 2001)
    np.testing.assert_allclose(grid[np.flatnonzero(scores.candidate_counts)], [0.4, 0.5, 0.6, 0.7], atol=1e-3)
    assert negative_ranks(scan).tolist() == [2, 7]


def test_without_a_cross_encoder_there_is_no_ce_panel(tmp_path):
    records = [replace(r, query_doc_ce=None) for r in RECORDS]
    candidates = _candidates_file(tmp_path)
    scores = score_sets(scan_negatives(records, candidates, QUERY_IDS), candidates)
    assert scores.positive_ce is None and scores.negative_ce is None


def test_examples_shorten_and_escape_texts():
    assert shorten("a  b\n c") == "a b c"
    long = shorten("word " * 100, width=20)
    assert len(long) == 20 and long.endswith("…")
    page = examples_html(RECORDS, {"p1": "<b>bold</b> positive", "n1": "first negative"}, {"q1": "what?"}, "ds")
    assert "&lt;b&gt;bold&lt;/b&gt; positive" in page
    assert "<b>n1</b> (cos 0.500, CE -1.000)<br>first negative" in page
    assert "none: every candidate was filtered out" in page  # q2 has no negatives


def test_the_summary_says_why_a_run_has_no_negatives():
    from negflow.report import summary_html

    counts = {"queries": 2, "queries_written": 2, "candidates": 10, "negatives": 0, "given_negatives": 0}
    counts |= {"queries_short": 2, "queries_dropped": 0, "padded": 0}
    selection = {"selection_score": "cosine", "counts": counts, "dropped": {"max_score": 10}}
    page = summary_html(selection, 50, "ds")
    assert page.startswith('<p style="color:#a00"><b>Warning:</b> no negative survived selection')
    assert "max_score dropped 10;" in page
    assert "Warning" not in summary_html({**selection, "counts": {**counts, "negatives": 3}}, 50, "ds")


def test_a_run_with_several_sources_shows_them_per_negative_and_in_the_counts():
    from negflow.negatives import NegativesRecord
    from negflow.report import examples_html, summary_html

    record = NegativesRecord(
        "q1", ["p1", "n1"], [1.0, 0.0], [0.9, 0.5], [1, 0.2, 0.2, 1], None, [[], ["dense", "bm25"]]
    )
    page = examples_html([record], {"n1": "first negative"}, {"q1": "what?"}, "ds")
    assert "<b>n1</b> (cos 0.500, from dense + bm25)<br>first negative" in page
    counts = {"queries": 2, "queries_written": 2, "candidates": 10, "negatives": 4, "given_negatives": 0}
    counts |= {"queries_short": 0, "queries_dropped": 0, "padded": 0}
    sources = {"dense": {"candidates": 8, "negatives": 3}, "bm25": {"candidates": 6, "negatives": 2}}
    page = summary_html({"selection_score": "cosine", "counts": counts, "dropped": {}, "sources": sources}, 50, "ds")
    assert "<tr><td>bm25</td><td>6</td><td>2</td><td>50.0%</td></tr>" in page
    assert "per source" not in summary_html({"selection_score": "cosine", "counts": counts, "dropped": {}}, 50, "ds")


def test_a_fused_run_plots_negatives_and_their_cosines_per_source(tmp_path, monkeypatch):
    """Catches a source left out of the plot, or a negative that two sources returned counted once."""
    import negflow.report as report

    records = [
        replace(RECORDS[0], doc_sources=[[], ["dense"], ["dense", "bm25"], []]),  # the padded one: no source
        replace(RECORDS[1], doc_sources=[[]]),
    ]
    single = _candidates_file(tmp_path)
    fused = tmp_path / "fused.parquet"
    table = pq.read_table(single)
    for name in ("dense", "bm25", "run_mine"):  # the run file returned no negative: a bar of 0
        table = table.append_column(f"rank_{name}", pa.array([1, 2, 3, 1], pa.int32()))
    pq.write_table(table, fused)
    scores = score_sets(scan_negatives(records, fused, QUERY_IDS), fused)
    assert list(scores.negative_cosine_by_source) == ["dense", "bm25", "run_mine"]  # as listed
    np.testing.assert_allclose(scores.negative_cosine_by_source["dense"], [0.5, 0.4])
    np.testing.assert_allclose(scores.negative_cosine_by_source["bm25"], [0.4])
    assert len(scores.negative_cosine_by_source["run_mine"]) == 0
    figures = []
    monkeypatch.setattr(report, "_save_figure", lambda fig, path: figures.append(fig))
    report.plot_scores(scores, tmp_path / "scores.png", "ds")
    axes = figures[0].axes
    assert [ax.get_title() for ax in axes[2:]] == ["ds: negatives per source", "ds: negatives' cosine per source"]
    labels, patches = axes[2].get_yticklabels(), axes[2].patches
    bars = {label.get_text(): patch.get_width() for label, patch in zip(labels, patches, strict=True)}
    assert bars == {"dense": 2, "bm25": 1, "run_mine": 0}
    assert [t.get_text() for t in axes[3].get_legend().get_texts()] == ["dense", "bm25"]
    report.plot_scores(score_sets(scan_negatives(RECORDS, single, QUERY_IDS), single), tmp_path / "s.png", "ds")
    assert len(figures[1].axes) == 2  # one source: the cosine and CE panels only, as before


def _round_files(tmp_path, r: int, pairs: list[tuple[int, int]], fallback: bool):
    """Round r's candidate table (sorted by query), selection report and calibration."""
    import json

    candidates = tmp_path / f"candidates-{r}.parquet"
    query_rows, doc_rows = [q for q, _ in pairs], [d for _, d in pairs]
    table = pa.table({"query_row": pa.array(query_rows, pa.int32()), "doc_row": pa.array(doc_rows, pa.int32())})
    pq.write_table(table, candidates)
    selection = tmp_path / f"selection-{r}.json"
    dist = {"negative_rank": {"q50": 10 - r}, "negative_cosine": {"q50": 0.5}}
    selection.write_text(json.dumps({"counts": {"negatives": 4 * r, "queries_short": 0}, "distributions": dist}))
    calibration = tmp_path / f"calibration-{r}.json"
    estimate = {"estimate": 0.03 * r, "interval": [0.01, 0.05 * r]}
    choice = {
        "name": None if fallback else "g1",
        "fallback": fallback,
        "reason": "thin evidence",
        "within_budget": True,
    }
    calibration.write_text(
        json.dumps({"budget": 0.1, "choice": choice, "grid": {"g1": {"fn_share": estimate, "median_rank": 9}}})
    )
    return str(candidates), str(selection), str(calibration)


def test_the_rounds_summary_counts_shared_candidates_block_by_block_and_shows_each_calibration(tmp_path):
    """The overlap is the same whatever the block of queries and the rows read at once (blocks and batches
    of 1 and 2 rows cut between and inside queries), None for a round without candidates, 0 against an
    empty round before; and each round carries its calibration's estimate, None where auto kept the
    configured selection."""
    from negflow.report import candidate_overlap, plot_rounds, summarize_rounds

    round_1 = [(0, 5), (0, 6), (1, 7), (2, 8), (2, 9), (4, 1)]
    round_2 = [(0, 6), (0, 5), (1, 3), (2, 9), (3, 3), (4, 1), (4, 2)]  # 4 of 7 round 1 had
    files = [_round_files(tmp_path, 1, round_1, fallback=True), _round_files(tmp_path, 2, round_2, fallback=False)]
    for block in (1, 2, 100):
        for batch in (1, 2, 1000):
            assert candidate_overlap(files[0][0], files[1][0], block_queries=block, batch_rows=batch) == 4 / 7
    empty = _round_files(tmp_path, 3, [], fallback=True)[0]
    assert candidate_overlap(files[0][0], empty) is None and candidate_overlap(empty, files[1][0]) == 0
    candidates, selections, calibrations = (list(column) for column in zip(*files, strict=True))
    rows = summarize_rounds(candidates, selections, [], calibrations)
    assert [row["candidates_in_previous_round"] for row in rows] == [None, 4 / 7]
    assert rows[0]["false_negative_estimate"] is None and "thin evidence" in rows[0]["calibration"]
    assert rows[1]["false_negative_estimate"] == {"estimate": 0.06, "interval": [0.01, 0.1]}
    assert rows[1]["calibration"].startswith("auto chose g1: estimated false negatives 6.0%")
    assert "false_negative_estimate" not in summarize_rounds(candidates, selections, [], [])[1]
    plot_rounds(rows, tmp_path / "rounds.png", "d")
    assert (tmp_path / "rounds.png").stat().st_size > 0
