"""The negatives.jsonl record: written as export always wrote it, read back with its roles."""

from negflow.negatives import NegativesRecord, read_negatives

LINE = (
    '{"query": "q1", "docs": ["p1", "p2", "g1", "n1"], "doc_scores": [2.0, 1.0, 0.0, 0.0], '
    '"query_doc_cos": [0.9, 0.8, 0.7, 0.5], "query_doc_ce": [3.5, 2.0, 1.0, null], '
    '"doc_doc_cos": [1.0, 0.1, 0.2, 0.3, 0.1, 1.0, 0.4, 0.5, 0.2, 0.4, 1.0, 0.6, 0.3, 0.5, 0.6, 1.0]}'
)


def test_a_record_reads_and_writes_the_same_line_and_knows_its_positives(tmp_path):
    record = NegativesRecord.from_json(LINE)
    assert record.to_json() == LINE
    assert record.n_positives == 2 and record.positives() == ["p1", "p2"] and record.negatives() == ["g1", "n1"]
    assert record.model_scores() == [3.5, 2.0, 1.0, 0.5]  # the cross-encoder's, the cosine where it has none
    path = tmp_path / "negatives.jsonl"
    path.write_text(LINE + "\n\n" + LINE.replace('"q1"', '"q2"') + "\n")
    assert [r.query for r in read_negatives(path)] == ["q1", "q2"]


def test_without_a_cross_encoder_the_field_is_absent_and_scores_are_cosines():
    record = NegativesRecord("q", ["p", "n"], [1.0, 0.0], [0.9, 0.4], [1.0, 0.2, 0.2, 1.0])
    assert '"query_doc_ce"' not in record.to_json()
    assert list(NegativesRecord.from_json(record.to_json()).__dict__) == list(record.__dict__)
    assert record.model_scores() == [0.9, 0.4] and record.negatives() == ["n"]
