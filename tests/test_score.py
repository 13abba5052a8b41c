"""The cross-encoder stage: every unique pair scored as `CrossEncoder.predict` scores it, in any number of
shards."""

import numpy as np
import pyarrow.parquet as pq

from negflow.models import BatchLimits
from negflow.score import merge_scores, score_pairs, unique_pairs
from negflow.store import load_table


def test_ce_scores_equal_cross_encoder_predict(staged, tiny_models):
    from sentence_transformers import CrossEncoder

    out, _ = staged
    scored = pq.read_table(out / "pair_scores.parquet").to_pylist()
    docs = load_table(out / "corpus", ["text"])["text"].to_pylist()
    queries = load_table(out / "queries", ["text"])["text"].to_pylist()
    model = CrossEncoder(str(tiny_models["ce"]), device="cpu", max_length=100)
    expected = model.predict([(queries[r["query_row"]], docs[r["doc_row"]]) for r in scored], batch_size=16)
    np.testing.assert_allclose([r["ce_score"] for r in scored], expected, atol=1e-5)
    assert all(0.0 < r["ce_score"] < 1.0 for r in scored)  # a 1-label CE's default activation is the sigmoid
    assert len(scored) == len(
        unique_pairs(pq.read_table(out / "candidates.parquet"), pq.read_table(out / "qrels.parquet"))[0]
    )


def test_score_shards_merge_to_the_one_shard_result(staged, tiny_models, tmp_path):
    out, _ = staged
    shards = []
    for i in (2, 1):
        shards.append(str(tmp_path / f"scored-{i}-of-2.parquet"))
        score_pairs(
            str(out / "pairs"), str(tiny_models["ce"]), 100, "fp32", "cpu", BatchLimits(9), shards[-1], f"{i}-of-2"
        )
    merge_scores(shards, str(tmp_path / "scored.parquet"))
    merged, single = pq.read_table(tmp_path / "scored.parquet"), pq.read_table(out / "pair_scores.parquet")
    assert merged.select(["query_row", "doc_row"]).equals(single.select(["query_row", "doc_row"]))
    np.testing.assert_allclose(merged["ce_score"].to_numpy(), single["ce_score"].to_numpy(), atol=1e-6)
