"""export_negatives on the fixture candidates: the CE-relative ceiling, the short-query policies, reading in
query blocks."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import staged_candidates

from negflow.candidates import Candidates, group_bounds
from negflow.export import export_negatives
from negflow.selection import SelectionSettings


def test_export_selects_below_95_percent_of_the_weakest_ce_positive(staged, tmp_path):
    out, paths = staged
    settings = SelectionSettings(num_negatives=3, relative_margin=0.05, positive_doc_margin=None, sampling="top")
    report = export_negatives(
        staged_candidates(out, paths), settings, str(tmp_path / "neg.jsonl"), str(tmp_path / "sel.json"), {}
    )
    records = [json.loads(line) for line in (tmp_path / "neg.jsonl").read_text().splitlines()]
    qrels = pq.read_table(out / "qrels.parquet").to_pylist()
    assert report["counts"]["queries"] == len(records) == len({r["query_id"] for r in qrels})
    assert report["selection_score"] == "ce"
    assert report["counts"]["negatives"] == sum(r["doc_scores"].count(0.0) for r in records)
    assert json.loads((tmp_path / "sel.json").read_text()) == report
    for rec in records:
        pos = [r for r in qrels if r["query_id"] == rec["query"] and r["positive"]]
        n_pos = len(pos)
        assert rec["docs"][:n_pos] == [r["doc_id"] for r in pos]
        assert rec["doc_scores"] == [float(r["score"]) for r in pos] + [0.0] * (len(rec["docs"]) - n_pos)
        assert len(rec["docs"]) - n_pos <= 3
        assert not set(rec["docs"][n_pos:]) & {r["doc_id"] for r in qrels if r["query_id"] == rec["query"]}
        ceiling = min(rec["query_doc_ce"][:n_pos]) * 0.95
        assert all(s <= ceiling + 1e-6 for s in rec["query_doc_ce"][n_pos:])
        matrix = np.array(rec["doc_doc_cos"]).reshape(len(rec["docs"]), len(rec["docs"]))
        np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
        np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)


def test_short_queries_keep_pad_and_drop(staged, tmp_path):
    """A window of one candidate leaves every query one short of 2; pad fills it from the corpus, drop removes it."""
    out, paths = staged
    base = dict(num_negatives=2, relative_margin=None, positive_doc_margin=None, dup_threshold=None, range_min=9)
    qrels = pq.read_table(out / "qrels.parquet").to_pylist()
    candidates = pq.read_table(out / "candidates.parquet").to_pylist()
    reports = {}
    for policy in ("keep", "pad", "drop"):
        path = tmp_path / f"{policy}.jsonl"
        s = SelectionSettings(**base, short_queries=policy)
        reports[policy] = export_negatives(
            staged_candidates(out, paths, scores=False), s, str(path), str(tmp_path / "s.json"), {}
        )
        records = [json.loads(line) for line in path.read_text().splitlines()]
        n_neg = [r["doc_scores"].count(0.0) for r in records]
        if policy == "keep":
            assert n_neg and set(n_neg) == {1}
            for rec in records:
                tenth = next(r for r in candidates if r["query_id"] == rec["query"] and r["rank"] == 10)
                assert rec["docs"][-1] == tenth["doc_id"]
        if policy == "drop":
            assert records == []
        if policy == "pad":
            assert set(n_neg) == {2}
            for rec in records:
                judged = {r["doc_id"] for r in qrels if r["query_id"] == rec["query"]}
                retrieved = {r["doc_id"] for r in candidates if r["query_id"] == rec["query"]}
                assert rec["docs"][-1] not in judged | retrieved  # a random document from beyond the candidates
    queries = reports["keep"]["counts"]["queries"]
    assert reports["keep"]["counts"]["queries_short"] == queries
    assert reports["drop"]["counts"]["queries_dropped"] == queries
    assert reports["pad"]["counts"]["padded"] == queries
    assert reports["pad"]["counts"]["queries_short_after_padding"] == 0


def test_export_reads_candidates_and_scores_in_query_blocks(staged, tmp_path, monkeypatch):
    """Blocks of one query, read from files in 5-row batches, write what one block of every query writes;
    a candidates file out of query order is refused rather than misread."""
    import pyarrow as pa

    from negflow.files import SortedRows

    out, paths = staged
    no_filters = dict(relative_margin=None, positive_doc_margin=None, dup_threshold=None)
    settings = SelectionSettings(num_negatives=3, sampling="random", **no_filters)
    whole = export_negatives(
        staged_candidates(out, paths), settings, str(tmp_path / "a.jsonl"), str(tmp_path / "a"), {}
    )
    monkeypatch.setattr(Candidates, "QUERY_BLOCK", 1)
    monkeypatch.setattr(SortedRows.__init__, "__defaults__", (5,))
    blocks = export_negatives(
        staged_candidates(out, paths), settings, str(tmp_path / "b.jsonl"), str(tmp_path / "b"), {}
    )
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes() and blocks == whole
    assert whole["counts"]["queries_written"] > 5 and whole["counts"]["negatives"] > 0
    candidates = pq.read_table(out / "candidates.parquet")
    pq.write_table(candidates.take(pa.array(np.arange(candidates.num_rows)[::-1])), tmp_path / "reversed.parquet")
    with pytest.raises(ValueError, match="rows are not sorted by query_row; rerun the stage that wrote them"):
        list(SortedRows(str(tmp_path / "reversed.parquet"), "query_row", ["query_row"]).below(10**9))


def test_iterate_hands_out_only_the_queries_asked_for(staged, monkeypatch):
    """Calibration reads its sampled queries only: the same queries, field for field, as the full reading
    gives them, across query blocks and file batches."""
    from negflow.files import SortedRows

    out, paths = staged
    monkeypatch.setattr(Candidates, "QUERY_BLOCK", 2)
    monkeypatch.setattr(SortedRows.__init__, "__defaults__", (5,))
    full = {q.query_row: q for q in staged_candidates(out, paths)}
    only = np.array(sorted(full)[1::3])
    picked = list(staged_candidates(out, paths).iterate(only))
    assert [q.query_row for q in picked] == only.tolist() and len(only) >= 3
    assert list(staged_candidates(out, paths).iterate(np.zeros(0, np.int64))) == []
    for q in picked:
        whole = full[q.query_row]
        assert q.cand_ids == whole.cand_ids and q.pos_ids == whole.pos_ids and q.query_id == whole.query_id
        for name in ("cand_rows", "cand_cos", "cand_ce", "cand_emb", "pos_emb", "pos_ce", "cand_hashes"):
            np.testing.assert_array_equal(getattr(q, name), getattr(whole, name))


def test_group_bounds():
    assert list(group_bounds(np.array([0, 0, 2, 5, 5, 5]))) == [(0, 0, 2), (2, 2, 3), (5, 3, 6)]
