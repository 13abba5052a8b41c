"""The search stage: FAISS and torch against brute force, sharded and approximate indexes against the exact
one, and the qrels' cosines."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import STAGED_SEARCH as SEARCH

from negflow.search import (
    add_shard_to_index,
    exact_top_k,
    merge_candidates,
    merge_index_parts,
    search_shard,
    top_candidates,
    train_index,
    write_index,
)
from negflow.store import ShardedEmbeddings


def test_search_matches_brute_force_and_excludes_qrels_documents(staged):
    out, paths = staged
    corpus = ShardedEmbeddings(paths["corpus"]).take(np.arange(len(ShardedEmbeddings(paths["corpus"]))))
    queries = ShardedEmbeddings(paths["queries"]).take(np.arange(len(ShardedEmbeddings(paths["queries"]))))
    qrels = pq.read_table(out / "qrels.parquet").to_pylist()
    candidates = pq.read_table(out / "candidates.parquet").to_pylist()
    judged = {(r["query_row"], r["doc_row"]) for r in qrels}
    for q in range(len(queries)):
        sims = corpus @ queries[q]
        expected = [d for d in np.argsort(-sims, kind="stable") if (q, d) not in judged][:10]
        got = [r for r in candidates if r["query_row"] == q]
        assert [r["rank"] for r in got] == list(range(1, 11))
        np.testing.assert_allclose([r["cosine"] for r in got], sims[expected], atol=1e-5)
    for r in qrels:
        assert r["cosine"] == pytest.approx(float(corpus[r["doc_row"]] @ queries[r["query_row"]]), abs=1e-5)


def test_top_candidates_drop_excluded_and_padding_and_rerank_exactly(tmp_path):
    docs = np.array([[1, 0], [0, 1], [0.6, 0.8], [0.8, 0.6], [0.8, 0.6], [-1, 0]], dtype=np.float32)
    np.save(tmp_path / "1-of-1.npy", docs)
    corpus = ShardedEmbeddings([str(tmp_path / "1-of-1.npy")])
    query = np.array([1, 0], dtype=np.float32)
    # the index's order is off (as approximate or batched arithmetic may leave it); -1 is FAISS padding
    rows, cosines = top_candidates(query, np.array([2, 4, -1, 3, 0, 5]), {0}, corpus, 3)
    assert rows.tolist() == [3, 4, 2]  # exact order, the tie between the twins 3 and 4 broken by row
    assert cosines.tolist() == pytest.approx([0.8, 0.8, 0.6])


def test_search_shards_merge_to_the_one_shard_result(staged, tmp_path):
    out, paths = staged
    dirs = [str(out / p) for p in ("corpus", "queries", "qrels")]
    shards = [str(tmp_path / f"{i}-of-3.parquet") for i in (3, 1, 2)]
    for path in shards:
        shard = path.rsplit("/", 1)[1].removesuffix(".parquet")
        assert search_shard(paths["corpus"], paths["queries"], *dirs, SEARCH, 2, path, shard)["queries"] > 0
    assert merge_candidates(shards, str(tmp_path / "m")) == {
        "shards": 3,
        "candidates": pq.read_metadata(out / "candidates.parquet").num_rows,
    }
    assert pq.read_table(tmp_path / "m").equals(pq.read_table(out / "candidates.parquet"))


@pytest.mark.parametrize(
    "index_settings",
    [
        {"index": "hnsw", "hnsw_m": 16, "hnsw_ef_construction": 200, "hnsw_ef_search": 256},
        {"index": "ivf", "ivf_nlist": 4, "ivf_nprobe": 4, "seed": 1},
        # 8 bytes a vector: the codes alone rank roughly; 4x oversampling and the exact rerank restore the order
        # (4 bytes missed some of the top 10 once the fixture's tokenizer had its vocabulary)
        {"index": "ivfpq", "ivf_nlist": 4, "ivf_nprobe": 4, "ivfpq_m": 8, "seed": 1},
    ],
)
def test_approximate_indexes_find_the_exact_neighbours_on_a_small_corpus(staged, tmp_path, index_settings):
    out, paths = staged
    settings = {**SEARCH, **index_settings}
    write_index(paths["corpus"], settings, str(tmp_path / "index.faiss"))
    args = (paths["corpus"], paths["queries"], str(out / "corpus"), str(out / "queries"), str(out / "qrels"))
    search_shard(*args, settings, 5, str(tmp_path / "m.parquet"), index_path=str(tmp_path / "index.faiss"))
    approx = pq.read_table(tmp_path / "m.parquet").to_pandas()
    exact = pq.read_table(out / "candidates.parquet").to_pandas()
    # every IVF cell probed, HNSW beam wider than the corpus: nothing may be missed. Documents with
    # identical embeddings (the fixture has some) may swap places or swap across the cut-off, so compare
    # the ranked cosines, and the documents whose cosine has no twin at or below the cut-off.
    assert approx[["query_row", "rank"]].values.tolist() == exact[["query_row", "rank"]].values.tolist()
    np.testing.assert_allclose(approx["cosine"], exact["cosine"], atol=1e-6)
    for (_, a), (_, e) in zip(approx.groupby("query_row"), exact.groupby("query_row"), strict=True):
        counts = e["cosine"].round(5).value_counts()
        clear = (e["cosine"] > e["cosine"].min() + 1e-5) & (e["cosine"].round(5).map(counts) == 1)
        assert set(e["doc_row"][clear]) <= set(a["doc_row"])


def test_ivfpq_needs_a_sub_vector_count_that_divides_the_dimension(staged, tmp_path):
    from negflow.errors import ConfigError

    _, paths = staged
    with pytest.raises(ConfigError, match="ivfpq_m 5 must divide the embedding dimension 32"):
        write_index(paths["corpus"], {"index": "ivfpq", "ivf_nlist": 4, "ivfpq_m": 5, "seed": 1}, str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_an_ivf_index_built_in_parts_equals_the_one_built_whole(staged, tmp_path, kind):
    """Trained once, each embedding shard added by its own job, merged: the same index (same lists, same
    codes), so the same candidates as building it in one process."""
    import faiss

    out, paths = staged
    settings = {**SEARCH, "index": kind, "ivf_nlist": 4, "ivf_nprobe": 2, "ivfpq_m": 4, "seed": 3}
    write_index(paths["corpus"], settings, str(tmp_path / "whole.faiss"))
    train_index(paths["corpus"], settings, str(tmp_path / "trained.faiss"))
    parts = [str(tmp_path / f"{i}-of-2.faiss") for i in (2, 1)]
    for part in parts:
        add_shard_to_index(str(tmp_path / "trained.faiss"), paths["corpus"], Path(part).stem, part)
    merge_index_parts(parts, str(tmp_path / "merged.faiss"))
    whole, merged = (faiss.read_index(str(tmp_path / f"{n}.faiss")) for n in ("whole", "merged"))
    assert merged.ntotal == whole.ntotal == len(ShardedEmbeddings(paths["corpus"]))
    for cell in range(whole.nlist):
        assert faiss.rev_swig_ptr(merged.invlists.get_ids(cell), merged.invlists.list_size(cell)).tolist() == (
            faiss.rev_swig_ptr(whole.invlists.get_ids(cell), whole.invlists.list_size(cell)).tolist()
        )
    args = (paths["corpus"], paths["queries"], str(out / "corpus"), str(out / "queries"), str(out / "qrels"))
    for name in ("whole", "merged"):
        search_shard(*args, settings, 5, str(tmp_path / f"{name}.parquet"), index_path=str(tmp_path / f"{name}.faiss"))
    assert pq.read_table(tmp_path / "merged.parquet").equals(pq.read_table(tmp_path / "whole.parquet"))


def test_search_refuses_a_corpus_no_larger_than_candidates(staged, tmp_path):
    """Local corpora are refused at config time; a hub corpus is first sized here, before any search."""
    from negflow.errors import InputError

    out, paths = staged
    n_docs = len(ShardedEmbeddings(paths["corpus"]))
    dirs = [str(out / p) for p in ("corpus", "queries", "qrels")]
    with pytest.raises(InputError, match=rf"corpus: {n_docs} candidates per query asked for, but the corpus holds"):
        search_shard(paths["corpus"], paths["queries"], *dirs, {**SEARCH, "candidates": n_docs}, 5, str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def expected_all(queries, corpus):
    return np.argsort(-(queries @ corpus.T), axis=1)


def test_exact_top_k_over_chunks_equals_a_full_sort():
    import torch

    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(103, 8)).astype(np.float32)
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    expected = np.argsort(-(queries @ corpus.T), axis=1)[:, :7]
    for backend in ({}, {"dtype": torch.float32}):  # FAISS's kernel and heap; torch matmul + top-k (the GPU path)
        top = exact_top_k(queries, (corpus[i : i + 10] for i in range(0, 103, 10)), 7, **backend)
        np.testing.assert_array_equal(top, expected)
    # fewer documents than k: every document, best first
    np.testing.assert_array_equal(exact_top_k(queries, [corpus[:4]], 7), expected_all(queries, corpus[:4]))
