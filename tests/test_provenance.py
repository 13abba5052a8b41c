"""Provenance fingerprints of models."""

from negflow.provenance import model_fingerprint


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
