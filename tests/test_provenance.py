"""Provenance: fingerprints of models, and the device and precision each model pass resolved to."""

import json

import pytest
import torch

from negflow.embed import embed_shard
from negflow.models import BatchLimits, cpu_has_bf16, write_model_pass
from negflow.provenance import build_provenance, model_fingerprint
from negflow.score import score_pairs


def test_model_fingerprint_hashes_local_weights_and_keeps_unreachable_hub_ids(tiny_models):
    local = model_fingerprint(str(tiny_models["embedder"]))
    assert local["ref"] == str(tiny_models["embedder"])
    assert (
        list(local["weights_sha256"]) == ["model.safetensors"]
        and len(local["weights_sha256"]["model.safetensors"]) == 64
    )
    assert local["configured_revision"] is None
    hub = {"ref": "no-such-org/no-such-model", "configured_revision": None}
    assert model_fingerprint("no-such-org/no-such-model") == hub
    pinned = model_fingerprint("no-such-org/no-such-model", "0123456789abcdef0123456789abcdef01234567")
    assert pinned == {**hub, "configured_revision": "0123456789abcdef0123456789abcdef01234567"}


def cpu_pass(dtype: str) -> dict:
    """What a CPU pass in `dtype` must record on this machine."""
    return {"device": "cpu", "dtype": dtype, "cpu_bf16": cpu_has_bf16(), "torch": torch.__version__}


def auto_on_cpu() -> str:
    """What `auto` must resolve to on this machine's CPU (README, `embedding_dtype`)."""
    return "bf16" if cpu_has_bf16() else "fp32"


@pytest.mark.parametrize("setting", ["fp32", "bf16", "auto"])
def test_model_stages_record_the_precision_they_resolved(staged, tiny_models, tmp_path, setting):
    """embed and score_pairs record the device and precision they ran with, not the setting: embed_shard
    recording its `dtype_setting` over the resolved dtype (tried) writes 'auto' here and fails."""
    out, _ = staged
    expected = auto_on_cpu() if setting == "auto" else setting
    embed_pass, score_pass = tmp_path / "embed.json", tmp_path / "score.json"
    embed_shard(
        [(str(out / "queries"), str(tmp_path / "queries.npy"))],
        "2-of-3",
        str(tiny_models["embedder"]),
        64,
        setting,
        "cpu",
        BatchLimits(7),
        pass_path=str(embed_pass),
    )
    assert json.loads(embed_pass.read_text()) == {"shard": "2-of-3", **cpu_pass(expected)}
    scores = str(tmp_path / "scores.parquet")
    ce = str(tiny_models["ce"])
    score_pairs(
        str(out / "pairs"), ce, 100, setting, "cpu", BatchLimits(9), scores, "3-of-3", pass_path=str(score_pass)
    )
    assert json.loads(score_pass.read_text()) == {"shard": "3-of-3", **cpu_pass(expected)}


def test_provenance_groups_alike_shards_and_shows_each_precision(staged, tiny_models, tmp_path):
    """Twelve embed shards, three of them in fp32 among bf16 ones: two entries, shards in number order
    (10-of-12 after 2-of-12), the fp32 ones apart; one score shard, one entry."""
    out, _ = staged
    cpu = torch.device("cpu")
    embedding_passes = []
    for i in range(12, 0, -1):
        embedding_passes.append(str(tmp_path / f"embed-{i}-of-12.json"))
        write_model_pass(embedding_passes[-1], f"{i}-of-12", cpu, None if i in (2, 5, 10) else torch.bfloat16)
    write_model_pass(str(tmp_path / "score.json"), "1-of-1", cpu, torch.float16)
    settings = {
        "embedding": str(tiny_models["embedder"]),
        "embedding_revision": None,
        "ce": str(tiny_models["ce"]),
        "ce_revision": None,
        "ce_seq_len": 100,
        "seed": 42,
    }
    inputs = {
        "manifest": str(out / "manifest.json"),
        "embedding_passes": embedding_passes,
        "ce_passes": [str(tmp_path / "score.json")],
    }
    models = build_provenance(inputs, settings)["models"]
    bf16 = [f"{i}-of-12" for i in (1, 3, 4, 6, 7, 8, 9, 11, 12)]
    assert models["embedding"]["passes"] == [
        {"shards": bf16, **cpu_pass("bf16")},
        {"shards": ["2-of-12", "5-of-12", "10-of-12"], **cpu_pass("fp32")},
    ]
    assert models["ce"]["passes"] == [{"shards": ["1-of-1"], **cpu_pass("fp16")}]
    assert models["embedding"]["weights_sha256"]  # the fingerprint is still there
    no_ce = build_provenance({**inputs, "ce_passes": []}, {**settings, "ce": None})["models"]
    assert list(no_ce) == ["embedding"]


def test_weights_hash_follows_every_parameter_and_its_dtype():
    """The hash the finetune report gives each model: equal for equal weights, different after a change of
    one value or of precision (bf16 tensors have no numpy dtype: their bytes are hashed as they are)."""
    import torch

    from negflow.provenance import weights_sha256

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    first = weights_sha256(model)
    assert weights_sha256(model) == first and len(first) == 64
    twin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    twin.load_state_dict(model.state_dict())
    assert weights_sha256(twin) == first
    with torch.no_grad():
        twin[0].weight[2, 1] += 1e-6
    assert weights_sha256(twin) != first
    assert weights_sha256(model.to(torch.bfloat16)) not in (first, weights_sha256(twin))
