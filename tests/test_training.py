"""Training-file rows on small hand-made inputs with exact expectations."""

import pytest

from negflow.training import Example, st_rows

# q1 has two positives and three negatives; q2 one positive and one negative
EXAMPLES = [
    Example("q1", ["p1", "p2"], ["n1", "n2", "n3"], [0.9, 0.8], [0.5, 0.4, 0.3]),
    Example("q2", ["p3"], ["n4"], [0.7], [0.2]),
    Example("q3", ["p4"], [], [0.6], []),
]


def test_triplet_pairs_each_negative_with_one_positive_in_turn():
    cols, skipped = st_rows(EXAMPLES, "triplet", 3, scores=True)
    rows = list(zip(cols["anchor"], cols["positive"], cols["negative"], strict=True))
    assert rows == [("q1", "p1", "n1"), ("q1", "p2", "n2"), ("q1", "p1", "n3"), ("q2", "p3", "n4")]
    assert cols["scores"] == [[0.9, 0.5], [0.8, 0.4], [0.9, 0.3], [0.7, 0.2]]
    assert skipped == 1  # q3 has no negative


def test_n_tuple_has_one_row_per_positive_and_skips_queries_short_of_the_columns():
    cols, skipped = st_rows(EXAMPLES, "n-tuple", 3, scores=False)
    assert list(cols) == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert cols["positive"] == ["p1", "p2"] and cols["negative_3"] == ["n3", "n3"]
    assert skipped == 2


def test_labeled_pair_and_list():
    cols, _ = st_rows(EXAMPLES, "labeled-pair", 3, scores=False)
    assert list(zip(cols["positive"], cols["label"], strict=True)) == [
        ("p1", 1),
        ("p2", 1),
        ("n1", 0),
        ("n2", 0),
        ("n3", 0),
        ("p3", 1),
        ("n4", 0),
    ]
    cols, _ = st_rows(EXAMPLES, "labeled-pair", 3, scores=True)
    assert "label" not in cols and cols["score"][:3] == [0.9, 0.8, 0.5]
    cols, _ = st_rows(EXAMPLES, "labeled-list", 3, scores=False)
    assert cols["positive"] == [["p1", "p2", "n1", "n2", "n3"], ["p3", "n4"]]
    assert cols["labels"] == [[1, 1, 0, 0, 0], [1, 0]]


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown sentence-transformers format"):
        st_rows(EXAMPLES, "quadruplet", 3, scores=False)


@pytest.mark.parametrize("fmt", ["triplet", "n-tuple", "labeled-pair", "labeled-list"])
@pytest.mark.parametrize("scores", [False, True])
def test_every_format_keeps_its_columns_when_no_query_has_a_negative(tmp_path, fmt, scores):
    """A selection that kept no negative still writes each format: its columns, no rows (not a crash); a
    written file has the same columns as the empty one."""
    import pyarrow.parquet as pq

    from negflow.training import st_schema, write_sentence_transformers

    empty, full = tmp_path / "empty.parquet", tmp_path / "full.parquet"
    assert write_sentence_transformers(iter([EXAMPLES[2:]]), fmt, 1, scores, str(empty)) == {
        "rows": 0,
        "queries_skipped": 1,
    }
    assert write_sentence_transformers(iter([EXAMPLES]), fmt, 1, scores, str(full))["rows"] > 0
    assert pq.read_schema(empty) == pq.read_schema(full) == st_schema(fmt, 1, scores)
    assert pq.ParquetFile(empty).metadata.num_rows == 0


def test_the_per_positive_layout_gives_every_positive_its_own_rows_as_sentence_transformers_does():
    cols, _ = st_rows(EXAMPLES, "triplet", 3, scores=True, layout="per_positive")
    assert list(zip(cols["positive"], cols["negative"], strict=True)) == [
        ("p1", "n1"),
        ("p1", "n2"),
        ("p1", "n3"),
        ("p2", "n1"),
        ("p2", "n2"),
        ("p2", "n3"),
        ("p3", "n4"),
    ]
    assert cols["scores"][3] == [0.8, 0.5]
    cols, skipped = st_rows(EXAMPLES, "labeled-list", 3, scores=False, layout="per_positive")
    assert cols["positive"] == [["p1", "n1", "n2", "n3"], ["p2", "n1", "n2", "n3"], ["p3", "n4"]]
    assert cols["labels"] == [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0]] and skipped == 1
    cols, _ = st_rows(EXAMPLES, "labeled-list", 3, scores=True, layout="per_positive")
    assert cols["scores"][1] == [0.8, 0.5, 0.4, 0.3]
    for fmt in ("n-tuple", "labeled-pair"):  # already one row per positive / per document
        assert st_rows(EXAMPLES, fmt, 3, False, "per_positive") == st_rows(EXAMPLES, fmt, 3, False)
    with pytest.raises(ValueError, match="unknown layout 'wide'"):
        st_rows(EXAMPLES, "triplet", 3, False, "wide")
