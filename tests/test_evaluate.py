"""Retrieval quality: nDCG@10, MRR@10 and Recall@100 as trec_eval / BEIR compute them."""

import math

import pytest

from negflow.evaluate import mrr_at, ndcg_at, recall_at, retrieval_quality


def test_metrics_on_a_hand_ranking():
    grades = {"a": 2, "b": 1, "c": 0, "d": 2}
    ranked = ["x", "a", "c", "b"]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at(ranked, grades, 10) == pytest.approx(dcg / idcg)
    assert mrr_at(ranked, {"a", "d"}, 10) == 0.5
    assert recall_at(ranked, {"a", "d"}, 100) == 0.5
    quality = retrieval_quality({"q": ranked, "none": ["a"]}, {"q": grades, "none": {"a": 0}}, 2)
    assert quality["queries"] == 1 and quality["mrr@10"] == 0.5
