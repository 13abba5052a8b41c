"""The finetune stage's training settings, on the tiny random-init model: each setting changes what it says
and nothing else."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import REPO

from negflow.config import dataset_settings, load_schema
from negflow.finetune import train, training_loss
from negflow.models import BatchLimits


@pytest.fixture(scope="module")
def no_dropout_model(tiny_models, tmp_path_factory):
    """The tiny embedder without dropout, so two trainings differ only by what they compute."""
    path = tmp_path_factory.mktemp("no-dropout") / "embedder"
    shutil.copytree(tiny_models["embedder"], path)
    config = json.loads((path / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (path / "config.json").write_text(json.dumps(config))
    return path


def settings(fixture_data, model, **overrides) -> dict:
    block = {key: str(fixture_data[key]) for key in ("corpus", "queries", "qrels")} | {"embedding": str(model)}
    schema = load_schema(str(REPO / "config/schema.yaml"))
    return dataset_settings({"datasets": {"t": block | overrides}}, schema, None)["t"] | {"device": "cpu"}


ROWS = {  # 12 rows of three texts, so a batch of 4 makes three steps
    "anchor": [f"how does function {i} handle its arguments" for i in range(12)],
    "positive": [f"function {i} checks its arguments and returns a value" for i in range(12)],
    "negative_1": [f"module {i} imports nothing at all" for i in range(12)],
}


def trained_weights(settings: dict, tmp_path, limits: BatchLimits) -> np.ndarray:
    import torch

    fast = {"finetune_batch_size": 4, "finetune_learning_rate": 1e-3}  # so that three steps move the weights
    model = train(ROWS, settings | fast, torch.device("cpu"), str(tmp_path), limits)
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


def test_the_cached_loss_trains_the_weights_the_plain_loss_trains(fixture_data, no_dropout_model, tmp_path):
    """CachedMultipleNegativesRankingLoss embeds 2 texts at a time here, yet its gradients are
    MultipleNegativesRankingLoss's: the weights after three steps agree within 1% of how far training moved
    them (a loss computed otherwise, or a step left out, moves them by the whole of that)."""
    import torch

    from negflow.models import configured_embedding_model

    plain = settings(fixture_data, no_dropout_model)
    assert plain["finetune_loss"] == "MultipleNegativesRankingLoss"  # the default
    cached = settings(fixture_data, no_dropout_model, finetune_loss="CachedMultipleNegativesRankingLoss")
    model = configured_embedding_model(plain, torch.device("cpu"))
    cpu = torch.device("cpu")
    loss = training_loss(model, cached, BatchLimits(2), cpu)
    assert type(loss).__name__ == "CachedMultipleNegativesRankingLoss" and loss.mini_batch_size == 2
    assert type(training_loss(model, plain, BatchLimits(2), cpu)).__name__ == "MultipleNegativesRankingLoss"
    # no more rows than the token budget holds at the model's full length (96 tokens): 960 // 96
    assert training_loss(model, cached, BatchLimits(512, 960), cpu).mini_batch_size == 10
    before = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    after_plain = trained_weights(plain, tmp_path / "plain", BatchLimits(32))
    after_cached = trained_weights(cached, tmp_path / "cached", BatchLimits(2))
    moved = np.abs(after_plain - before).max()
    assert moved > 1e-3
    np.testing.assert_allclose(after_cached, after_plain, rtol=0, atol=moved * 1e-2)  # Adam magnifies rounding


def test_the_warmup_ratio_changes_the_trained_weights(fixture_data, no_dropout_model, tmp_path):
    """The default 0.1 warms up over the first of three steps; 0 starts at the full learning rate."""
    default = settings(fixture_data, no_dropout_model)
    assert default["finetune_warmup_ratio"] == 0.1
    none = settings(fixture_data, no_dropout_model, finetune_warmup_ratio=0.0)
    a, b = (trained_weights(s, tmp_path / name, BatchLimits(32)) for s, name in ((default, "a"), (none, "b")))
    assert np.abs(a - b).max() > 1e-5


def test_the_training_settings_are_the_training_rules_params():
    """Changing the loss or the warmup reruns what trains (finetune, a round's train_round), nothing
    upstream of it."""
    from negflow.dependencies import RULE_SETTINGS

    training = {"finetune_loss", "finetune_warmup_ratio"}
    trains = {"finetune", "train_round"}
    assert all(training <= set(RULE_SETTINGS[rule]) for rule in trains)
    assert not any(training & set(keys) for rule, keys in RULE_SETTINGS.items() if rule not in trains)
