"""The stages as library calls on the fixture set with tiny real models: each output checked against
sentence-transformers' own encode/predict, FAISS against brute force, and export against its inputs."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from negflow.embed import ShardedEmbeddings, embed_shard, parse_shard, shard_range
from negflow.export import export_negatives, group_bounds
from negflow.pairs import prepare_pairs, score_pairs, unique_pairs
from negflow.prepare import load_table, prepare
from negflow.search import filter_hits, search

SEARCH = {"candidates": 10, "index": "flat", "device": "cpu"}


@pytest.fixture(scope="module")
def staged(tmp_path_factory, fixture_data, tiny_models):
    """Run prepare, embed (in 2 shards), search, prepare_pairs and score_pairs once for the module."""
    out = tmp_path_factory.mktemp("stages")
    prepare(
        str(fixture_data["corpus"]),
        str(fixture_data["queries"]),
        str(fixture_data["qrels"]),
        str(tiny_models["embedder"]),
        "query: ",
        None,
        64,
        1,
        str(out / "corpus"),
        str(out / "queries"),
        str(out / "qrels"),
    )
    paths = {"corpus": [], "queries": []}
    for part in paths:
        for shard in ("0-of-2", "1-of-2"):
            path = out / f"{part}-{shard}.npy"
            embed_shard(str(out / part), shard, str(tiny_models["embedder"]), 64, "fp32", "cpu", 7, str(path))
            paths[part].append(str(path))
    search(
        paths["corpus"],
        paths["queries"],
        str(out / "corpus"),
        str(out / "queries"),
        str(out / "qrels"),
        SEARCH,
        5,
        str(out / "mined.parquet"),
        str(out / "qrels.parquet"),
    )
    prepare_pairs(
        str(out / "mined.parquet"),
        str(out / "qrels.parquet"),
        str(out / "corpus"),
        str(out / "queries"),
        str(tiny_models["ce"]),
        100,
        str(out / "pairs"),
    )
    score_pairs(str(out / "pairs"), str(tiny_models["ce"]), 100, "fp32", "cpu", 9, str(out / "scored.parquet"))
    return out, paths


def test_prepare_keeps_queries_with_positives_and_all_their_qrels(staged, fixture_data):
    out, _ = staged
    queries = load_table(out / "queries", ["id"])["id"].to_pylist()
    assert "q-unjudged" not in queries
    qrels = load_table(out / "qrels", ["query_id", "doc_id", "score", "positive"]).to_pylist()
    lines = fixture_data["qrels"].read_text().splitlines()[1:]
    assert len(qrels) == len(lines)
    assert {(r["query_id"], r["doc_id"], r["score"], r["positive"]) for r in qrels} == {
        (q, d, int(s), int(s) >= 1) for q, d, s in (line.split("\t") for line in lines)
    }


def test_embeddings_equal_sentence_transformers_encode(staged, tiny_models):
    from sentence_transformers import SentenceTransformer

    out, paths = staged
    model = SentenceTransformer(str(tiny_models["embedder"]), device="cpu")
    model.max_seq_length = 64
    texts = load_table(out / "corpus", ["text"])["text"].to_pylist()
    expected = model.encode(texts, normalize_embeddings=True, batch_size=16)
    np.testing.assert_allclose(ShardedEmbeddings(paths["corpus"]).take(np.arange(len(texts))), expected, atol=1e-5)
    queries = load_table(out / "queries", ["text"])["text"].to_pylist()
    expected_q = model.encode(queries, prompt="query: ", normalize_embeddings=True)
    np.testing.assert_allclose(ShardedEmbeddings(paths["queries"]).take(np.arange(len(queries))), expected_q, atol=1e-5)


def test_search_matches_brute_force_and_excludes_qrels_documents(staged):
    out, paths = staged
    corpus = ShardedEmbeddings(paths["corpus"]).take(np.arange(len(ShardedEmbeddings(paths["corpus"]))))
    queries = ShardedEmbeddings(paths["queries"]).take(np.arange(len(ShardedEmbeddings(paths["queries"]))))
    qrels = pq.read_table(out / "qrels.parquet").to_pylist()
    mined = pq.read_table(out / "mined.parquet").to_pylist()
    judged = {(r["query_row"], r["doc_row"]) for r in qrels}
    for q in range(len(queries)):
        sims = corpus @ queries[q]
        expected = [d for d in np.argsort(-sims, kind="stable") if (q, d) not in judged][:10]
        got = [r for r in mined if r["query_row"] == q]
        assert [r["rank"] for r in got] == list(range(1, 11))
        np.testing.assert_allclose([r["cosine"] for r in got], sims[expected], atol=1e-5)
    for r in qrels:
        assert r["cosine"] == pytest.approx(float(corpus[r["doc_row"]] @ queries[r["query_row"]]), abs=1e-5)


def test_ce_scores_equal_cross_encoder_predict(staged, tiny_models):
    from sentence_transformers import CrossEncoder

    out, _ = staged
    scored = pq.read_table(out / "scored.parquet").to_pylist()
    docs = load_table(out / "corpus", ["text"])["text"].to_pylist()
    queries = load_table(out / "queries", ["text"])["text"].to_pylist()
    model = CrossEncoder(str(tiny_models["ce"]), device="cpu", max_length=100)
    expected = model.predict([(queries[r["query_row"]], docs[r["doc_row"]]) for r in scored], batch_size=16)
    np.testing.assert_allclose([r["ce_score"] for r in scored], expected, atol=1e-5)
    assert all(0.0 < r["ce_score"] < 1.0 for r in scored)  # a 1-label CE's default activation is the sigmoid
    assert len(scored) == len(
        unique_pairs(pq.read_table(out / "mined.parquet"), pq.read_table(out / "qrels.parquet"))[0]
    )


def test_export_selects_below_95_percent_of_the_weakest_positive(staged, tmp_path):
    out, paths = staged
    settings = {"num_negatives": 3, "selection_score": "auto", "relative_margin": 0.05}
    counts = export_negatives(
        str(out / "mined.parquet"),
        str(out / "qrels.parquet"),
        paths["corpus"],
        str(out / "scored.parquet"),
        settings,
        str(tmp_path / "neg.jsonl"),
    )
    records = [json.loads(line) for line in (tmp_path / "neg.jsonl").read_text().splitlines()]
    qrels = pq.read_table(out / "qrels.parquet").to_pylist()
    assert counts["queries"] == len(records) == len({r["query_id"] for r in qrels})
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


def test_shards_cover_every_row_once():
    rows = [list(shard_range(10, i, 3)) for i in range(3)]
    assert rows == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert parse_shard("2-of-8") == (2, 8)
    with pytest.raises(ValueError):
        parse_shard("8-of-8")


def test_sharded_embeddings_take_across_shards(tmp_path):
    a, b = np.arange(6, dtype=np.float32).reshape(3, 2), np.arange(6, 10, dtype=np.float32).reshape(2, 2)
    np.save(tmp_path / "1-of-2.npy", b)
    np.save(tmp_path / "0-of-2.npy", a)
    emb = ShardedEmbeddings([str(tmp_path / "1-of-2.npy"), str(tmp_path / "0-of-2.npy")])
    assert len(emb) == 5
    np.testing.assert_array_equal(emb.take(np.array([4, 0, 3])), [[8, 9], [0, 1], [6, 7]])
    np.testing.assert_array_equal(np.concatenate(list(emb.chunks(2))), np.concatenate([a, b]))


def test_filter_hits_drops_excluded_and_padding():
    rows, scores = filter_hits(np.array([0.9, 0.8, 0.7, 0.6]), np.array([4, 2, -1, 7]), {2}, 5)
    assert rows.tolist() == [4, 7] and scores.tolist() == pytest.approx([0.9, 0.6])


def test_group_bounds():
    assert list(group_bounds(np.array([0, 0, 2, 5, 5, 5]))) == [(0, 0, 2), (2, 2, 3), (5, 3, 6)]


@pytest.mark.parametrize(
    "index_settings",
    [
        {"index": "hnsw", "hnsw_m": 16, "hnsw_ef_construction": 200, "hnsw_ef_search": 256},
        {"index": "ivf", "ivf_nlist": 4, "ivf_nprobe": 4, "seed": 1},
    ],
)
def test_approximate_indexes_find_the_exact_neighbours_on_a_small_corpus(staged, tmp_path, index_settings):
    out, paths = staged
    args = (paths["corpus"], paths["queries"], str(out / "corpus"), str(out / "queries"), str(out / "qrels"))
    search(*args, {**SEARCH, **index_settings}, 5, str(tmp_path / "m.parquet"), str(tmp_path / "q.parquet"))
    approx = pq.read_table(tmp_path / "m.parquet").select(["query_row", "doc_row", "rank"]).to_pylist()
    exact = pq.read_table(out / "mined.parquet").select(["query_row", "doc_row", "rank"]).to_pylist()
    assert approx == exact  # every IVF cell probed, HNSW beam wider than the corpus: nothing may be missed


def test_cpu_bf16_stays_close_to_fp32(staged, tiny_models, tmp_path):
    out, paths = staged
    embed_shard(
        str(out / "queries"), "0-of-1", str(tiny_models["embedder"]), 64, "bf16", "cpu", 7, str(tmp_path / "bf16.npy")
    )
    fp32 = ShardedEmbeddings(paths["queries"]).take(np.arange(len(np.load(tmp_path / "bf16.npy"))))
    cosines = np.einsum("ij,ij->i", np.load(tmp_path / "bf16.npy"), fp32)
    assert cosines.min() > 0.99


def test_a_folder_that_is_no_model_is_one_line(tmp_path):
    import torch

    from negflow.config import ConfigError
    from negflow.models import load_cross_encoder, load_embedding_model

    (tmp_path / "notes.txt").write_text("not a model")
    for load, kind in ((load_embedding_model, "SentenceTransformer"), (load_cross_encoder, "CrossEncoder")):
        with pytest.raises(ConfigError) as err:
            load(str(tmp_path), torch.device("cpu"))
        assert f"'{tmp_path}': cannot load as a {kind}" in str(err.value)
        assert "\n" not in str(err.value)
