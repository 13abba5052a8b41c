"""The embed stage on the fixture set with a tiny real model: equal to `SentenceTransformer.encode`, whatever
the shards, batch limits or dtype."""

import numpy as np
import pytest

from negflow.embed import embed_shard
from negflow.models import BatchLimits
from negflow.store import ShardedEmbeddings, load_table


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


def test_embed_shards_merge_to_the_one_shard_result(staged, tiny_models, tmp_path):
    out, paths = staged
    whole = tmp_path / "corpus-1-of-1.npy"
    embed_shard(
        [(str(out / "corpus"), str(whole))], "1-of-1", str(tiny_models["embedder"]), 64, "fp32", "cpu", BatchLimits(7)
    )
    sharded = ShardedEmbeddings(paths["corpus"])
    # equal to float32 rounding, not bit for bit: a shard's length-sorted batches have other shapes
    np.testing.assert_allclose(np.concatenate(list(sharded.chunks(1000))), np.load(whole), atol=1e-6)


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


def test_truncate_dim_keeps_that_many_dimensions_renormalised_as_encode_does(staged, tiny_models, tmp_path):
    """Matryoshka truncation: the stored vectors, and the audit's and finetune's query vectors, are the
    model's first `truncate_dim` dimensions re-normalised, as `encode(..., normalize_embeddings=True)` gives
    them with sentence-transformers' truncate_dim."""
    import torch
    from sentence_transformers import SentenceTransformer

    from negflow.errors import ConfigError
    from negflow.evaluate import embed_texts
    from negflow.models import load_embedding_model

    out, _ = staged
    path = tmp_path / "corpus-12.npy"
    ref = str(tiny_models["embedder"])
    embed_shard([(str(out / "corpus"), str(path))], "1-of-1", ref, 64, "fp32", "cpu", BatchLimits(7), None, 12)
    got = np.load(path)
    texts = load_table(out / "corpus", ["text"])["text"].to_pylist()
    model = SentenceTransformer(ref, device="cpu", truncate_dim=12)
    model.max_seq_length = 64
    expected = model.encode(texts, normalize_embeddings=True, batch_size=16)
    assert got.shape == (len(texts), 12) and expected.shape == got.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    cpu = torch.device("cpu")
    loaded = load_embedding_model(ref, cpu, 64, truncate_dim=12)
    np.testing.assert_allclose(embed_texts(loaded, texts[:9], None, BatchLimits(4), cpu, None), got[:9], atol=1e-5)
    with pytest.raises(ConfigError) as err:
        load_embedding_model(ref, cpu, truncate_dim=33)
    assert str(err.value) == f"config: truncate_dim 33 is larger than the 32 dimensions of '{ref}'"


def test_a_model_whose_tokenizer_differs_from_the_tokens_is_refused_before_embedding(staged, tiny_models, tmp_path):
    """prepare recorded its tokenizer's fingerprint; the same model saved again (as a trained round's model
    is) passes, one that no longer lowercases (a cased tokenizer) is refused, naming the manifest, before an
    embedding is written, and so is a manifest written before the fingerprint, saying to rerun prepare."""
    import json
    import shutil

    from negflow.errors import InputError

    out, _ = staged
    manifest = str(out / "manifest.json")
    assert len(json.loads((out / "manifest.json").read_text())["tokenizer_sha256"]) == 64
    resaved = tmp_path / "resaved"
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(str(tiny_models["embedder"]), device="cpu").save(str(resaved))
    cased = tmp_path / "cased"
    shutil.copytree(resaved, cased)
    config = json.loads((cased / "tokenizer_config.json").read_text())
    config["do_lower_case"] = False  # BertTokenizerFast sets its normalizer from this
    (cased / "tokenizer_config.json").write_text(json.dumps(config))
    args = ("1-of-1", 64, "fp32", "cpu", BatchLimits(7))
    embed_shard(
        [(str(out / "queries"), str(tmp_path / "same.npy"))],
        args[0],
        str(resaved),
        *args[1:],
        prepared_manifest=manifest,
    )
    assert (tmp_path / "same.npy").is_file()
    with pytest.raises(InputError, match=rf"^{cased}: its tokenizer is not the one .*{manifest}"):
        embed_shard(
            [(str(out / "queries"), str(tmp_path / "cased.npy"))],
            args[0],
            str(cased),
            *args[1:],
            prepared_manifest=manifest,
        )
    assert not (tmp_path / "cased.npy").exists()
    older = tmp_path / "older-manifest.json"  # written before prepare recorded its tokenizer
    older.write_text(
        json.dumps(
            {k: v for k, v in json.loads((out / "manifest.json").read_text()).items() if k != "tokenizer_sha256"}
        )
    )
    with pytest.raises(InputError, match=rf"^{older}: written before prepare recorded its tokenizer; rerun prepare$"):
        embed_shard(
            [(str(out / "queries"), str(tmp_path / "old.npy"))],
            args[0],
            str(resaved),
            *args[1:],
            prepared_manifest=str(older),
        )
