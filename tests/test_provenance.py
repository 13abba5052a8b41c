"""Provenance fingerprints of models."""

from negflow.provenance import model_fingerprint


def test_model_fingerprint_hashes_local_weights_and_keeps_unreachable_hub_ids(tiny_models):
    local = model_fingerprint(str(tiny_models["embedder"]))
    assert local["ref"] == str(tiny_models["embedder"])
    assert (
        list(local["weights_sha256"]) == ["model.safetensors"]
        and len(local["weights_sha256"]["model.safetensors"]) == 64
    )
    assert model_fingerprint("no-such-org/no-such-model") == {"ref": "no-such-org/no-such-model"}
