"""What a rule's output depends on: the settings that go into its `params:` and the library files among its
inputs (`code=`), so Snakemake reruns a rule, and what follows it, exactly when one of them changes. The
rules read both while Snakemake builds the DAG (rules/common.smk: `settings_for`, `code_of`)."""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path
from typing import Any

from negflow.selection import SELECTION_KEYS
from negflow.sources import is_fused

EMBEDDING_MODEL = [  # what decides the embedding model's vectors, for the rules that run it
    "embedding",
    "embedding_revision",
    "trust_remote_code",
    "embedding_model_kwargs",
    "embedding_seq_len",
    "truncate_dim",
]

TRAINING = [  # how finetune and every round >= 2 train
    "finetune_negatives",
    "finetune_epochs",
    "finetune_batch_size",
    "finetune_learning_rate",
    "finetune_warmup_ratio",
    "finetune_loss",
]

BM25_SETTINGS = ["bm25_k1", "bm25_b", "bm25_stemmer", "bm25_stopwords"]  # the bm25 source's index and words

# The settings each rule's output depends on, by rule name. They go into the rule's `params:`, so changing
# one reruns that rule and everything downstream of it, and nothing upstream. Every other schema key says
# why it reruns nothing (`x-no-rerun`): batch sizes, for one, travel as resources.
RULE_SETTINGS = {
    "read_pairs": [
        "pairs",
        "pairs_revision",
        "corpus",
        "set_mode",
        "given_negatives",
        "max_pairs",
        "anchor_column",
        "positive_column",
        "negative_column",
    ],
    "prepare": [
        "corpus",
        "queries",
        "qrels",
        "embedding",
        "embedding_revision",
        "trust_remote_code",
        "query_prompt",
        "doc_prompt",
        "query_prompt_name",
        "doc_prompt_name",
        "embedding_seq_len",
        "min_positive_score",
        "audit_holdout",
    ],
    "prepare_judgments": ["audit_qrels", "finetune_eval_qrels", "queries", "candidates"],
    "embed": [*EMBEDDING_MODEL, "embedding_dtype", "device"],
    "train_index": ["index"],
    "build_index": ["index"],
    "search": ["candidates", "index", "device"],
    "index_bm25": BM25_SETTINGS,
    "search_bm25": [*BM25_SETTINGS, "candidates", "candidates_per_source"],
    "read_run": ["queries", "candidates", "candidates_per_source"],
    "fuse_candidates": ["candidate_sources"],
    "prepare_ce_pairs": ["ce", "ce_revision", "trust_remote_code", "ce_seq_len"],
    "score_pairs": ["ce", "ce_revision", "trust_remote_code", "ce_model_kwargs", "ce_seq_len", "ce_dtype", "device"],
    "export_negatives": ["selection", "selection_score", *SELECTION_KEYS],
    # after export_negatives, though it runs before: `negflow settings` then lists the selection settings
    # under the rule every run has (first_rules takes the first rule naming a setting)
    "calibrate_selection": ["selection_score", *SELECTION_KEYS, "fn_budget"],
    "export_flag": ["flag_layout"],
    "export_sentence_transformers": ["num_negatives", "train_scores", "st_layout"],
    "audit": [
        "audit_qrels",
        "audit_holdout",
        "min_positive_score",
        *EMBEDDING_MODEL,
        "embedding_dtype",
        "device",
        "selection",
        "selection_score",
        *SELECTION_KEYS,
    ],
    "finetune": [
        "finetune_eval_qrels",
        *TRAINING,
        *EMBEDDING_MODEL,
        "min_positive_score",
        "device",
        "seed",
    ],
    "train_round": [  # the model a round trains (its starting model is the rule's `start` param)
        *TRAINING,
        "round_training",
        *EMBEDDING_MODEL,
        "device",
        "seed",
    ],
}
# The settings naming a BEIR dataset's tables: files or hub ids.
BEIR_TABLES = ("corpus", "queries", "qrels")
# An index's own settings, for the rules that build or search it.
INDEX_SETTINGS = {
    "flat": [],
    "hnsw": ["hnsw_m", "hnsw_ef_construction", "hnsw_ef_search"],
    "ivf": ["ivf_nlist", "ivf_nprobe", "seed"],
    "ivfpq": ["ivf_nlist", "ivf_nprobe", "ivfpq_m", "seed"],
}
# The rules whose settings decide the negatives, as a provenance sidecar records them.
PROVENANCE_RULES = ("prepare", "embed", "search", "score_pairs", "calibrate_selection", "export_negatives")


def rule_settings(rule: str, settings: dict) -> dict[str, Any]:
    """The settings `rule`'s output depends on, from one dataset's settings: its RULE_SETTINGS, plus those
    that matter only in some runs (an index's own, the seed where it draws something, the given-negatives
    policy of a pairs dataset), less a pairs dataset's corpus, queries and qrels where the rule reads
    read_pairs' tables instead (as inputs)."""
    keys = list(RULE_SETTINGS[rule])
    if rule in ("train_index", "build_index", "search"):
        keys += INDEX_SETTINGS[settings["index"]]
    if rule == "search" and settings["candidates_per_source"] is not None:
        keys.append("candidates_per_source")  # the dense source's share of a fused list
    if rule == "prepare" and settings["audit_holdout"]:
        keys.append("seed")  # the seed picks which positive stays visible
    if rule == "read_pairs" and settings["max_pairs"] is not None:
        keys.append("seed")  # the seed draws the sample
    if settings["pairs"] is not None and rule in ("prepare", "prepare_judgments"):
        keys = [key for key in keys if key not in BEIR_TABLES]  # read_pairs' tables are these rules' inputs
    if rule in ("calibrate_selection", "export_negatives") and settings["pairs"] is not None:
        keys.append("given_negatives")
    return {key: settings[key] for key in keys}


def first_rules(defaults: dict) -> dict[str, str]:
    """Each setting some rule's output depends on, with the first such rule in pipeline order, over every
    kind of run: BEIR or pairs data, each index, and the keys only some runs depend on (a max_pairs sample,
    audit_holdout) switched on. `defaults`: every setting's value (the schema's defaults)."""
    base = defaults | {"corpus": "c", "queries": "q", "qrels": "r", "max_pairs": 1, "audit_holdout": True}
    runs = [base | {"pairs": pairs, "index": index} for pairs in (None, "pairs") for index in INDEX_SETTINGS]
    first: dict[str, str] = {}
    for rule in RULE_SETTINGS:
        for settings in runs:
            for key in rule_settings(rule, settings):
                first.setdefault(key, rule)
    return first


def provenance_settings(settings: dict) -> dict[str, Any]:
    """Every setting that changes the negatives, as configured (a pairs dataset's reading settings first;
    the calibration's only under `selection: auto`)."""
    rules = ("read_pairs", *PROVENANCE_RULES) if settings["pairs"] is not None else PROVENANCE_RULES
    if is_fused(settings["candidate_sources"]):  # the default [dense] records what it always did
        bm25 = ("search_bm25",) if "bm25" in settings["candidate_sources"] else ()
        rules = (*rules[: rules.index("search") + 1], *bm25, "fuse_candidates", *rules[rules.index("search") + 1 :])
    if settings["selection"] != "auto":
        rules = tuple(rule for rule in rules if rule != "calibrate_selection")
    keys = [key for rule in rules for key in RULE_SETTINGS[rule]] + INDEX_SETTINGS[settings["index"]]
    if settings["candidates_per_source"] is not None:  # what the dense search (and every source) returned
        keys.append("candidates_per_source")
    if "round" in settings:  # a round's number; from round 2 on how its model was trained, and from round 3
        r = settings["round"]  # on which model that training started from
        keys += ["round", *(TRAINING if r >= 2 else ()), *(["round_training"] if r >= 3 else ())]
        if r >= 2:  # the configured model that the rounds' training began from
            keys.append("round_base_model")
    return {key: settings[key] for key in dict.fromkeys(keys)}


@functools.cache
def library_imports(path: Path) -> frozenset[str]:
    """The negflow modules a Python file imports (`negflow.X` or `from negflow import X`), anywhere in it.
    Cached: every rule asks for its script's modules while Snakemake builds the DAG, and most share them."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "negflow":
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("negflow."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("negflow."))
    return frozenset(names)


def script_modules(script: str | os.PathLike) -> list[str]:
    """The library files a stage script imports, directly or through other library modules; imports inside
    functions count, since they run too. Snakemake's code trigger sees only the script itself, so the rules
    list these as inputs. The library is `negflow/` beside the script in a checkout, the installed package
    when the workflow runs from a wheel."""
    package = Path(script).parent / "negflow"
    if not package.is_dir():
        package = Path(__file__).parent
    seen: set[str] = set()
    todo = [Path(script)]
    while todo:
        for name in library_imports(todo.pop()):
            if name not in seen and (package / f"{name}.py").is_file():
                seen.add(name)
                todo.append(package / f"{name}.py")
    return sorted(str(package / f"{name}.py") for name in seen)
