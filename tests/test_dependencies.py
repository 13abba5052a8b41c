"""What a rule's output depends on: every setting reruns the rules it changes (or says why it reruns none),
and every stage script's code inputs follow its imports."""

import re

from conftest import REPO, rule_bodies

from negflow.config import load_schema, setting_defaults
from negflow.dependencies import INDEX_SETTINGS, RULE_SETTINGS, provenance_settings, rule_settings, script_modules

SCHEMA = load_schema(REPO / "config" / "schema.yaml")


def test_every_setting_is_some_rules_setting_or_says_why_it_reruns_nothing():
    """A new schema key must be listed under the rules whose output it changes (dependencies.RULE_SETTINGS), or
    be marked `x-no-rerun` with the reason; never both."""
    properties = {**SCHEMA["$defs"]["settings"]["properties"], **SCHEMA["$defs"]["dataset"]["properties"]}
    used = {key for keys in [*RULE_SETTINGS.values(), *INDEX_SETTINGS.values()] for key in keys}
    no_rerun = {key for key, spec in properties.items() if spec.get("x-no-rerun")}
    assert used <= set(properties)
    assert set(properties) - used == no_rerun
    assert "embedding_batch_size" in no_rerun and "relative_margin" in used


def test_rule_settings_are_keyed_by_the_rules_that_use_them():
    """Each rule passes its own name to settings_for; every RULE_SETTINGS entry is such a rule."""
    named = {}
    for rule, body in rule_bodies().items():
        for used in re.findall(r'settings_for\("(\w+)"\)', body):
            named[rule] = used
    assert named and all(rule == used for rule, used in named.items())
    assert set(named) == set(RULE_SETTINGS)


def test_rule_settings_add_what_only_some_runs_depend_on():
    settings = setting_defaults(SCHEMA) | {"pairs": None, "corpus": "c", "queries": "q", "qrels": "r"}
    assert "seed" not in rule_settings("prepare", settings)
    assert rule_settings("prepare", settings | {"audit_holdout": True})["seed"] == settings["seed"]
    assert list(rule_settings("search", settings | {"index": "hnsw"}))[-3:] == [
        "hnsw_m",
        "hnsw_ef_construction",
        "hnsw_ef_search",
    ]
    assert "given_negatives" in rule_settings("export_negatives", settings | {"pairs": "p.jsonl"})
    recorded = provenance_settings(settings | {"pairs": "p.jsonl", "index": "ivf"})
    assert list(recorded)[:3] == ["pairs", "pairs_revision", "corpus"]
    assert list(recorded)[-2:] == ["ivf_nlist", "ivf_nprobe"]
    # the default [dense] records what it always did; fused sources record their own settings
    assert not {"candidate_sources", "bm25_k1"} & set(provenance_settings(settings))
    fused = provenance_settings(settings | {"candidate_sources": ["dense", "bm25"], "candidates_per_source": 50})
    assert {"candidate_sources", "candidates_per_source", "bm25_k1", "bm25_stemmer"} <= set(fused)
    assert "candidates_per_source" not in rule_settings("search", settings)
    assert rule_settings("search", settings | {"candidates_per_source": 50})["candidates_per_source"] == 50
    model_options = ["trust_remote_code", "query_prompt_name", "doc_prompt_name", "truncate_dim"]
    model_options += [f"{kind}_{option}" for kind in ("embedding", "ce") for option in ("revision", "model_kwargs")]
    assert set(model_options) <= set(recorded)


def test_model_options_rerun_exactly_the_rules_that_load_that_model():
    """Tokenizing rules (prepare, prepare_ce_pairs) load a model too, but its kwargs and truncation change no token."""
    rules_of = {
        key: {rule for rule, keys in RULE_SETTINGS.items() if key in keys}
        for key in SCHEMA["$defs"]["settings"]["properties"]
    }
    loads = rules_of["embedding"] | rules_of["ce"]
    assert loads == {"prepare", "embed", "audit", "finetune", "train_round", "prepare_ce_pairs", "score_pairs"}
    assert rules_of["trust_remote_code"] == loads
    assert rules_of["embedding_revision"] == {"prepare", "embed", "audit", "finetune", "train_round"}
    trained = {"embed", "audit", "finetune", "train_round"}
    assert rules_of["embedding_model_kwargs"] == rules_of["truncate_dim"] == trained
    assert rules_of["query_prompt_name"] == rules_of["doc_prompt_name"] == {"prepare"}
    assert rules_of["ce_revision"] == {"prepare_ce_pairs", "score_pairs"}
    assert rules_of["ce_model_kwargs"] == {"score_pairs"}


def test_script_modules_follow_imports_at_any_depth_and_inside_functions(tmp_path):
    package = tmp_path / "negflow"
    package.mkdir()
    (package / "a.py").write_text("from negflow.b import thing\n")
    (package / "b.py").write_text("def f():\n    import negflow.c as c\n    return c\n")
    (package / "c.py").write_text("import os\nfrom negflow import d\n")
    (package / "d.py").write_text("")
    (package / "unused.py").write_text("")
    (tmp_path / "stage.py").write_text("import json\nfrom negflow.a import x\nfrom negflow.nowhere import y\n")
    assert script_modules(tmp_path / "stage.py") == [str(package / f"{m}.py") for m in "abcd"]


def test_every_stage_script_depends_on_the_files_it_runs():
    scripts = sorted((REPO / "scripts").glob("*.py"))
    assert len(scripts) >= 18
    names = {s.stem: {p.split("/")[-1][:-3] for p in script_modules(s)} for s in scripts}
    assert all({"files", "stage", "errors"} <= modules for modules in names.values())
    assert {"embed", "models", "store", "shards"} <= names["embed"]
    assert "models" not in names["export_flag"]  # storage does not drag the model code in
    assert "selection" in names["export_negatives"] and "selection" not in names["embed"]
    # editing what later stages use (selection, the audit's judgments) must not rerun the first stages, and
    # with them every embedding
    assert not {"selection", "candidates", "judgments"} & (names["read_pairs"] | names["prepare"])
