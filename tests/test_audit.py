"""The audit's false-negative counts on the fixture candidates."""

from dataclasses import replace

import pyarrow.parquet as pq
from conftest import staged_candidates

from negflow.audit import audit_selection
from negflow.selection import SelectionSettings


def test_audit_counts_judged_positives_picked_as_negatives(staged):
    out, paths = staged
    candidates = staged_candidates(out, paths, scores=False)
    table = pq.read_table(out / "candidates.parquet").to_pylist()
    third = {r["query_id"]: {r["doc_id"]} for r in table if r["rank"] == 3}
    top = SelectionSettings(relative_margin=None, positive_doc_margin=None, dup_threshold=None, sampling="top")
    strategies = {"two": replace(top, num_negatives=2), "three": replace(top, num_negatives=3)}
    report = audit_selection(candidates, strategies, {q: third[q] for q in list(third)[:4]})
    assert report["queries_audited"] == 4
    two, three = report["strategies"]["two"], report["strategies"]["three"]
    assert (two["false_negatives"], two["negatives"], two["median_rank"]) == (0, 8, 1.5)
    assert (three["false_negatives"], three["negatives"], three["median_rank"]) == (4, 12, 2.0)
    assert three["false_negative_rate"] == round(4 / 12, 4)
