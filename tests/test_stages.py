"""The stages as library calls on the fixture set with tiny real models: each output checked against
sentence-transformers' own encode/predict, FAISS against brute force, and export against its inputs."""

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from negflow.audit import audit_selection
from negflow.candidates import MinedCandidates, group_bounds
from negflow.embed import embed_shard
from negflow.export import export_negatives
from negflow.models import BatchLimits, length_sorted_batches
from negflow.pairs import merge_scores, prepare_pairs, score_pairs, unique_pairs
from negflow.prepare import prepare
from negflow.search import (
    add_shard_to_index,
    merge_candidates,
    merge_index_parts,
    search_shard,
    top_candidates,
    train_index,
    write_index,
)
from negflow.selection import SelectionSettings
from negflow.shards import parse_shard, shard_range
from negflow.store import ShardedEmbeddings, load_table

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
        True,
        3,
        str(out / "corpus"),
        str(out / "queries"),
        str(out / "qrels"),
        str(out / "holdout.parquet"),
        str(out / "manifest.json"),
    )
    paths = {"corpus": [], "queries": []}
    for shard in ("1-of-2", "2-of-2"):  # both parts in one call, as the embed rule does
        outputs = [(str(out / part), str(out / f"{part}-{shard}.npy")) for part in paths]
        written = embed_shard(outputs, shard, str(tiny_models["embedder"]), 64, "fp32", "cpu", BatchLimits(7))
        assert list(written) == [path for _, path in outputs]
        for part, (_, path) in zip(paths, outputs, strict=True):
            paths[part].append(path)
    search_shard(
        paths["corpus"],
        paths["queries"],
        *(str(out / p) for p in ("corpus", "queries", "qrels")),
        SEARCH,
        5,
        str(out / "candidates-1-of-1.parquet"),
    )
    merge_candidates(
        [str(out / "candidates-1-of-1.parquet")],
        paths["corpus"],
        paths["queries"],
        str(out / "queries"),
        str(out / "qrels"),
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
    score_pairs(
        str(out / "pairs"), str(tiny_models["ce"]), 100, "fp32", "cpu", BatchLimits(9), str(out / "scored.parquet")
    )
    return out, paths


def test_prepare_keeps_queries_with_positives_and_all_their_qrels(staged, fixture_data):
    out, _ = staged
    queries = load_table(out / "queries", ["id"])["id"].to_pylist()
    assert "q-unjudged" not in queries
    qrels = load_table(out / "qrels", ["query_id", "doc_id", "score", "positive"]).to_pylist()
    lines = fixture_data["qrels"].read_text().splitlines()[1:]
    held = pq.read_table(out / "holdout.parquet").to_pylist()  # the staged run hides q0's weaker positive
    assert len(qrels) == len(lines) - len(held) == len(lines) - 1
    assert {(r["query_id"], r["doc_id"], r["score"], r["positive"]) for r in qrels} == {
        (q, d, int(s), int(s) >= 1)
        for q, d, s in (line.split("\t") for line in lines)
        if (q, d) != (held[0]["query_id"], held[0]["doc_id"])
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


def mined_candidates(out, paths, scored=True, selection_score="auto"):
    return MinedCandidates(
        str(out / "mined.parquet"),
        str(out / "qrels.parquet"),
        paths["corpus"],
        paths["queries"],
        str(out / "corpus"),
        str(out / "scored.parquet") if scored else None,
        selection_score,
    )


def test_holdout_hides_all_but_one_top_graded_positive(staged, fixture_data):
    out, _ = staged
    held = pq.read_table(out / "holdout.parquet").to_pylist()
    qrels = pq.read_table(out / "qrels.parquet").to_pylist()
    # the fixture's q0 has positives graded 1 and 2: the grade-2 one stays visible
    assert held == [{"query_id": "q0", "doc_id": held[0]["doc_id"], "score": 1}]
    visible = [r for r in qrels if r["query_id"] == "q0" and r["positive"]]
    assert [r["score"] for r in visible] == [2]
    assert held[0]["doc_id"] not in {r["doc_id"] for r in qrels}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["query_prompt"] == "query: " and manifest["embedding_seq_len"] == 64
    assert manifest["inputs"]["qrels"]["sha256"] == hashlib.sha256(fixture_data["qrels"].read_bytes()).hexdigest()


def test_export_selects_below_95_percent_of_the_weakest_ce_positive(staged, tmp_path):
    out, paths = staged
    settings = SelectionSettings(num_negatives=3, relative_margin=0.05, positive_doc_margin=None, sampling="top")
    report = export_negatives(
        mined_candidates(out, paths), settings, str(tmp_path / "neg.jsonl"), str(tmp_path / "sel.json"), {}
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
    mined = pq.read_table(out / "mined.parquet").to_pylist()
    reports = {}
    for policy in ("keep", "pad", "drop"):
        path = tmp_path / f"{policy}.jsonl"
        s = SelectionSettings(**base, short_queries=policy)
        reports[policy] = export_negatives(
            mined_candidates(out, paths, scored=False), s, str(path), str(tmp_path / "s.json"), {}
        )
        records = [json.loads(line) for line in path.read_text().splitlines()]
        n_neg = [r["doc_scores"].count(0.0) for r in records]
        if policy == "keep":
            assert n_neg and set(n_neg) == {1}
            for rec in records:
                tenth = next(r for r in mined if r["query_id"] == rec["query"] and r["rank"] == 10)
                assert rec["docs"][-1] == tenth["doc_id"]
        if policy == "drop":
            assert records == []
        if policy == "pad":
            assert set(n_neg) == {2}
            for rec in records:
                judged = {r["doc_id"] for r in qrels if r["query_id"] == rec["query"]}
                retrieved = {r["doc_id"] for r in mined if r["query_id"] == rec["query"]}
                assert rec["docs"][-1] not in judged | retrieved  # a random document from beyond the candidates
    queries = reports["keep"]["counts"]["queries"]
    assert reports["keep"]["counts"]["queries_short"] == queries
    assert reports["drop"]["counts"]["queries_dropped"] == queries
    assert reports["pad"]["counts"]["padded"] == queries
    assert reports["pad"]["counts"]["queries_short_after_padding"] == 0


def test_audit_counts_judged_positives_picked_as_negatives(staged):
    out, paths = staged
    mined = mined_candidates(out, paths, scored=False)
    table = pq.read_table(out / "mined.parquet").to_pylist()
    third = {r["query_id"]: {r["doc_id"]} for r in table if r["rank"] == 3}
    top = SelectionSettings(relative_margin=None, positive_doc_margin=None, dup_threshold=None, sampling="top")
    strategies = {"two": replace(top, num_negatives=2), "three": replace(top, num_negatives=3)}
    report = audit_selection(mined, strategies, {q: third[q] for q in list(third)[:4]})
    assert report["queries_audited"] == 4
    two, three = report["strategies"]["two"], report["strategies"]["three"]
    assert (two["false_negatives"], two["negatives"], two["median_rank"]) == (0, 8, 1.5)
    assert (three["false_negatives"], three["negatives"], three["median_rank"]) == (4, 12, 2.0)
    assert three["false_negative_rate"] == round(4 / 12, 4)


def test_shards_cover_every_row_once():
    rows = [list(shard_range(10, *parse_shard(f"{i}-of-3"))) for i in (1, 2, 3)]
    assert rows == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert parse_shard("2-of-8") == (1, 8)  # Snakemake's scatter items count from 1
    for bad in ("0-of-8", "9-of-8", "2of8"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_sharded_embeddings_take_across_shards(tmp_path):
    a, b = np.arange(6, dtype=np.float32).reshape(3, 2), np.arange(6, 10, dtype=np.float32).reshape(2, 2)
    np.save(tmp_path / "10-of-10.npy", b)
    np.save(tmp_path / "9-of-10.npy", a)  # sorted by shard number, not by name
    emb = ShardedEmbeddings([str(tmp_path / "10-of-10.npy"), str(tmp_path / "9-of-10.npy")])
    assert len(emb) == 5
    np.testing.assert_array_equal(emb.take(np.array([4, 0, 3])), [[8, 9], [0, 1], [6, 7]])
    np.testing.assert_array_equal(np.concatenate(list(emb.chunks(2))), np.concatenate([a, b]))


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
    merge_candidates(shards, paths["corpus"], paths["queries"], dirs[1], dirs[2], *(str(tmp_path / n) for n in "mq"))
    assert pq.read_table(tmp_path / "m").equals(pq.read_table(out / "mined.parquet"))
    assert pq.read_table(tmp_path / "q").equals(pq.read_table(out / "qrels.parquet"))


def test_group_bounds():
    assert list(group_bounds(np.array([0, 0, 2, 5, 5, 5]))) == [(0, 0, 2), (2, 2, 3), (5, 3, 6)]


@pytest.mark.parametrize(
    "index_settings",
    [
        {"index": "hnsw", "hnsw_m": 16, "hnsw_ef_construction": 200, "hnsw_ef_search": 256},
        {"index": "ivf", "ivf_nlist": 4, "ivf_nprobe": 4, "seed": 1},
        # 4 bytes a vector: the codes alone rank roughly; 4x oversampling and the exact rerank restore the order
        {"index": "ivfpq", "ivf_nlist": 4, "ivf_nprobe": 4, "ivfpq_m": 4, "seed": 1},
    ],
)
def test_approximate_indexes_find_the_exact_neighbours_on_a_small_corpus(staged, tmp_path, index_settings):
    out, paths = staged
    settings = {**SEARCH, **index_settings}
    write_index(paths["corpus"], settings, str(tmp_path / "index.faiss"))
    args = (paths["corpus"], paths["queries"], str(out / "corpus"), str(out / "queries"), str(out / "qrels"))
    search_shard(*args, settings, 5, str(tmp_path / "m.parquet"), index_path=str(tmp_path / "index.faiss"))
    approx = pq.read_table(tmp_path / "m.parquet").to_pandas()
    exact = pq.read_table(out / "mined.parquet").to_pandas()
    # every IVF cell probed, HNSW beam wider than the corpus: nothing may be missed. Documents with
    # identical embeddings (the fixture has some) may swap places or swap across the cut-off, so compare
    # the ranked cosines, and the documents whose cosine has no twin at or below the cut-off.
    assert approx[["query_row", "rank"]].values.tolist() == exact[["query_row", "rank"]].values.tolist()
    np.testing.assert_allclose(approx["cosine"], exact["cosine"], atol=1e-6)
    for (_, a), (_, e) in zip(approx.groupby("query_row"), exact.groupby("query_row"), strict=True):
        counts = e["cosine"].round(5).value_counts()
        clear = (e["cosine"] > e["cosine"].min() + 1e-5) & (e["cosine"].round(5).map(counts) == 1)
        assert set(e["doc_row"][clear]) <= set(a["doc_row"])


def test_cpu_bf16_stays_close_to_fp32(staged, tiny_models, tmp_path):
    out, paths = staged
    embed_shard(
        [(str(out / "queries"), str(tmp_path / "bf16.npy"))],
        "1-of-1",
        str(tiny_models["embedder"]),
        64,
        "bf16",
        "cpu",
        BatchLimits(7),
    )
    fp32 = ShardedEmbeddings(paths["queries"]).take(np.arange(len(np.load(tmp_path / "bf16.npy"))))
    cosines = np.einsum("ij,ij->i", np.load(tmp_path / "bf16.npy"), fp32)
    assert cosines.min() > 0.99


def test_token_budget_batches_hold_many_short_rows_and_few_long_ones():
    lengths = np.array([10, 200, 10, 50, 10, 200, 50])
    batches = length_sorted_batches(lengths, max_rows=3, max_tokens=400)
    # longest first; a batch is sized by its first (longest) row: 400 // 200 = 2 rows, then 400 // 50 = 8
    # capped at 3 rows (the third is a 10-token row), then the rest
    assert [b.tolist() for b in batches] == [[1, 5], [3, 6, 0], [2, 4]]
    assert [b.tolist() for b in length_sorted_batches(lengths, max_rows=8, max_tokens=100)] == [
        [1],
        [5],
        [3, 6],
        [0, 2, 4],
    ]
    # a row longer than the budget still gets a batch of its own
    assert [b.tolist() for b in length_sorted_batches(np.array([500, 3]), 8, 100)] == [[0], [1]]


def test_batch_limits_do_not_change_embeddings(staged, tiny_models, tmp_path):
    out, paths = staged
    one_by_one = tmp_path / "tiny-budget.npy"
    embed_shard(
        [(str(out / "corpus"), str(one_by_one))],
        "1-of-1",
        str(tiny_models["embedder"]),
        64,
        "fp32",
        "cpu",
        BatchLimits(512, 8),
    )
    whole = ShardedEmbeddings(paths["corpus"])
    np.testing.assert_allclose(np.load(one_by_one), whole.take(np.arange(len(whole))), atol=1e-6)


def test_auto_dtype_is_bf16_exactly_on_cpus_with_native_bf16(monkeypatch):
    import torch

    from negflow import models

    cpu = torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(models, "cpu_has_bf16", lambda native=native: native)
        assert models.compute_dtype("auto", cpu) == expected
    assert models.compute_dtype("fp32", cpu) is None
    assert BatchLimits(512).token_budget(cpu) == 4096
    assert BatchLimits(512, 1000).token_budget(torch.device("cuda")) == 1000


def test_a_folder_that_is_no_model_is_one_line(tmp_path):
    import torch

    from negflow.errors import ConfigError
    from negflow.models import load_cross_encoder, load_embedding_model

    (tmp_path / "notes.txt").write_text("not a model")
    for load, kind in ((load_embedding_model, "SentenceTransformer"), (load_cross_encoder, "CrossEncoder")):
        with pytest.raises(ConfigError) as err:
            load(str(tmp_path), torch.device("cpu"))
        assert f"'{tmp_path}': cannot load as a {kind}" in str(err.value)
        assert "\n" not in str(err.value)


def test_embed_and_score_shards_merge_to_the_one_shard_result(staged, tiny_models, tmp_path):
    out, paths = staged
    whole = tmp_path / "corpus-1-of-1.npy"
    embed_shard(
        [(str(out / "corpus"), str(whole))], "1-of-1", str(tiny_models["embedder"]), 64, "fp32", "cpu", BatchLimits(7)
    )
    sharded = ShardedEmbeddings(paths["corpus"])
    # equal to float32 rounding, not bit for bit: a shard's length-sorted batches have other shapes
    np.testing.assert_allclose(np.concatenate(list(sharded.chunks(1000))), np.load(whole), atol=1e-6)

    shards = []
    for i in (2, 1):
        shards.append(str(tmp_path / f"scored-{i}-of-2.parquet"))
        score_pairs(
            str(out / "pairs"), str(tiny_models["ce"]), 100, "fp32", "cpu", BatchLimits(9), shards[-1], f"{i}-of-2"
        )
    merge_scores(shards, str(tmp_path / "scored.parquet"))
    merged, single = pq.read_table(tmp_path / "scored.parquet"), pq.read_table(out / "scored.parquet")
    assert merged.select(["query_row", "doc_row"]).equals(single.select(["query_row", "doc_row"]))
    np.testing.assert_allclose(merged["ce_score"].to_numpy(), single["ce_score"].to_numpy(), atol=1e-6)


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


def test_load_table_reads_a_saved_dataset_as_datasets_does(tmp_path):
    import datasets

    rows = {"id": [f"d{i}" for i in range(10)], "length": list(range(10, 0, -1))}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"), num_shards=3)
    assert len(list((tmp_path / "ds").glob("*.arrow"))) == 3
    table = load_table(tmp_path / "ds", ["length", "id"])
    assert table.column_names == ["length", "id"]
    assert table.to_pydict() == {"length": rows["length"], "id": rows["id"]}


@pytest.mark.parametrize("kind", ["embed", "score"])
def test_out_of_memory_halves_the_batch_and_continues(staged, tiny_models, kind, caplog):
    """A forward pass over more than 300 padded tokens raises torch's CUDA OOM error: the stage halves the
    batch until it fits and returns what an unconstrained run returns; one row that does not fit re-raises."""
    import torch

    from negflow.models import load_cross_encoder, load_embedding_model, run_model
    from negflow.store import load_extras, load_tokens

    out, _ = staged
    folder, loader, key = {
        "embed": (out / "corpus", load_embedding_model, "sentence_embedding"),
        "score": (out / "pairs", load_cross_encoder, "scores"),
    }[kind]
    rows, extras = load_tokens(folder), load_extras(folder)
    model = loader(str(tiny_models["embedder" if kind == "embed" else "ce"]), torch.device("cpu"), 64)
    cpu, limits = torch.device("cpu"), BatchLimits(512, 4096)

    def collect():
        result = np.zeros((rows.num_rows, 1 if kind == "score" else model.get_embedding_dimension()), np.float32)
        for idx, values in run_model(model, rows, extras, key, limits, cpu, None, kind):
            result[idx] = values.reshape(len(idx), -1)
        return result

    expected = collect()
    real_forward, seen = model.forward, []

    def forward(features, **kwargs):
        seen.append(features["input_ids"].numel())
        if features["input_ids"].numel() > 300:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real_forward(features, **kwargs)

    model.forward = forward
    with caplog.at_level("WARNING", logger="negflow"):
        got = collect()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert any(n > 300 for n in seen) and max(n for n in seen if n <= 300) > 0
    assert "out of memory on a batch of" in caplog.text and "continuing with at most" in caplog.text

    real = model.forward
    model.forward = lambda features, **kw: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory."))
    with pytest.raises(torch.OutOfMemoryError):
        collect()
    model.forward = real


def test_search_refuses_a_corpus_no_larger_than_candidates(staged, tmp_path):
    """Local corpora are refused at config time; a hub corpus is first sized here, before any search."""
    from negflow.errors import InputError

    out, paths = staged
    n_docs = len(ShardedEmbeddings(paths["corpus"]))
    dirs = [str(out / p) for p in ("corpus", "queries", "qrels")]
    with pytest.raises(InputError, match=rf"corpus: {n_docs} candidates per query asked for, but the corpus holds"):
        search_shard(paths["corpus"], paths["queries"], *dirs, {**SEARCH, "candidates": n_docs}, 5, str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_tokenize_in_length_sorted_chunks_returns_each_rows_own_tokens_in_input_order(tiny_models, fixture_data):
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from negflow.models import tokenize

    texts = [json.loads(line)["text"] for line in fixture_data["corpus"].read_text().splitlines()]
    texts = [texts[0] * 40, texts[1][:5], *texts[2:9]]  # one truncated, one tiny, then unsorted lengths
    embedder = SentenceTransformer(str(tiny_models["embedder"]), device="cpu")
    rows, extras = tokenize(embedder, texts, "query: ", chunk_rows=2)
    rows = {k: v.to_pylist() for k, v in rows.items()}
    for i, text in enumerate(texts):
        alone = embedder.preprocess([text], prompt="query: ")
        assert rows["input_ids"][i] == alone["input_ids"][0].tolist()
        assert rows["length"][i] == len(rows["input_ids"][i]) == int(alone["attention_mask"].sum())
    assert rows["length"][0] == 96  # truncated to max_seq_length
    alone = embedder.preprocess(texts[:1], prompt="query: ")
    per_row = {"input_ids", "token_type_ids", "attention_mask"}
    assert extras == {k: v.tolist() if hasattr(v, "tolist") else v for k, v in alone.items() if k not in per_row}
    assert extras["prompt_length"] == 3  # [CLS] query :, which pooling may leave out

    ce = CrossEncoder(str(tiny_models["ce"]), device="cpu", max_length=100)
    pairs = [(texts[i], texts[-1 - i]) for i in range(len(texts))]
    rows, _ = tokenize(ce, pairs, chunk_rows=3)
    rows = {k: v.to_pylist() for k, v in rows.items()}
    for i, pair in enumerate(pairs):
        alone = ce.preprocess([pair])
        assert rows["input_ids"][i] == alone["input_ids"][0].tolist()
        assert rows["token_type_ids"][i] == alone["token_type_ids"][0].tolist()


@pytest.mark.parametrize("side", ["right", "left"])
def test_batches_from_arrow_buffers_are_padded_as_the_tokenizer_pads(tiny_models, fixture_data, side):
    """Vectorised padding from the flat token values of a sliced table: the tokenizer's own `pad` output
    (its side, pad id, pad token type, multiple of 8), row for row."""
    import pyarrow as pa
    import torch
    from sentence_transformers import CrossEncoder

    from negflow.models import TokenBatches, tokenize

    texts = [json.loads(line)["text"] for line in fixture_data["corpus"].read_text().splitlines()]
    ce = CrossEncoder(str(tiny_models["ce"]), device="cpu", max_length=100)
    ce.tokenizer.padding_side = side
    pairs = [(texts[i][: 7 * i + 5], texts[-1 - i]) for i in range(9)]
    columns, _ = tokenize(ce, pairs)
    batcher = TokenBatches(pa.table(columns).slice(2), ce.tokenizer, torch.device("cpu"))
    rows = {k: v.to_pylist() for k, v in columns.items()}
    for idx in (np.array([4, 0, 2]), np.array([6]), np.arange(7)):
        arrays, slot = batcher.pad(idx)
        keys = ("input_ids", "token_type_ids")
        want = ce.tokenizer.pad(
            {k: [rows[k][i + 2] for i in idx] for k in keys}, padding=True, pad_to_multiple_of=8, return_tensors="np"
        )
        assert slot == -1 and set(arrays) == set(want)
        for key in want:
            np.testing.assert_array_equal(arrays[key], want[key], err_msg=key)
        assert arrays["input_ids"].dtype == np.int64 and arrays["attention_mask"].sum() == sum(
            rows["length"][i + 2] for i in idx
        )


def test_tokenizing_in_worker_processes_writes_the_same_bytes(staged, fixture_data, tiny_models, tmp_path, monkeypatch):
    """prepare and prepare_pairs with three worker processes (several blocks each, written in order) write
    folders byte for byte equal to the single-process ones."""
    import negflow.store as store_module

    monkeypatch.setattr(store_module, "TOKENIZE_ROWS", 7)
    out, _ = staged
    args = [str(fixture_data[n]) for n in ("corpus", "queries", "qrels")] + [str(tiny_models["embedder"])]
    for workers in (1, 3):
        folder = tmp_path / str(workers)
        outputs = [str(folder / n) for n in ("corpus", "queries", "qrels", "holdout.parquet", "manifest.json")]
        prepare(*args, "query: ", None, 64, 1, True, 3, *outputs, workers=workers)
        inputs = [str(out / n) for n in ("mined.parquet", "qrels.parquet", "corpus", "queries")]
        prepare_pairs(*inputs, str(tiny_models["ce"]), 100, str(folder / "pairs"), workers=workers)

    def contents(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    single, parallel = contents(tmp_path / "1"), contents(tmp_path / "3")
    assert single == parallel and len([name for name in single if name.endswith(".arrow")]) == 4
    assert load_table(tmp_path / "3" / "corpus", ["id"]).num_rows == load_table(out / "corpus", ["id"]).num_rows


def test_export_reads_candidates_and_scores_in_query_blocks(staged, tmp_path, monkeypatch):
    """Blocks of one query, read from files in 5-row batches, write what one block of every query writes;
    a candidates file out of query order is refused rather than misread."""
    import pyarrow as pa

    from negflow.files import SortedRows

    out, paths = staged
    no_filters = dict(relative_margin=None, positive_doc_margin=None, dup_threshold=None)
    settings = SelectionSettings(num_negatives=3, sampling="random", **no_filters)
    whole = export_negatives(mined_candidates(out, paths), settings, str(tmp_path / "a.jsonl"), str(tmp_path / "a"), {})
    monkeypatch.setattr(MinedCandidates, "QUERY_BLOCK", 1)
    monkeypatch.setattr(SortedRows.__init__, "__defaults__", (5,))
    blocks = export_negatives(
        mined_candidates(out, paths), settings, str(tmp_path / "b.jsonl"), str(tmp_path / "b"), {}
    )
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes() and blocks == whole
    assert whole["counts"]["queries_written"] > 5 and whole["counts"]["negatives"] > 0
    mined = pq.read_table(out / "mined.parquet")
    pq.write_table(mined.take(pa.array(np.arange(mined.num_rows)[::-1])), tmp_path / "reversed.parquet")
    with pytest.raises(ValueError, match="rows are not sorted by query_row; rerun the stage that wrote them"):
        list(SortedRows(str(tmp_path / "reversed.parquet"), "query_row", ["query_row"]).below(10**9))
