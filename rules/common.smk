"""Helpers shared by the rules: per-dataset settings, the params each stage depends on, input lists."""

import os
import sys

from snakemake.exceptions import WorkflowError

sys.path.insert(0, os.path.join(workflow.basedir, "scripts"))

from negflow.config import dataset_settings, load_schema, scatter_counts
from negflow.dependencies import provenance_settings, rule_settings, script_modules
from negflow.errors import ConfigError
from negflow.hooks import cancel_scheduler_timers
from negflow.refs import is_local_data, split_ref
from negflow.shards import SHARD_PATTERN

try:
    SCHEMA = load_schema(os.path.join(workflow.basedir, "config", "schema.yaml"))
    DATASETS = dataset_settings(
        config, SCHEMA, os.path.join(workflow.basedir, "config", "datasets")
    )
    SCATTER = scatter_counts(config, SCHEMA)
except ConfigError as e:
    raise WorkflowError(str(e)) from None


def code_of(script):
    """The library files `scripts/{script}.py` imports, directly or not. Snakemake's code trigger sees only
    the script itself, so these are inputs: editing one reruns the rules that use it (and what depends on
    them)."""
    return script_modules(os.path.join(workflow.basedir, "scripts", f"{script}.py"))


def beir_sources(dataset):
    """The corpus, queries and qrels that prepare reads: the configured BEIR files, or for a pairs dataset
    the tables rule read_pairs writes."""
    settings = DATASETS[dataset]
    if settings["pairs"] is None:
        return {key: settings[key] for key in ("corpus", "queries", "qrels")}
    return {
        key: f"results/{dataset}/read_pairs/{key}.parquet"
        for key in ("corpus", "queries", "qrels")
    }


def settings_for(name):
    """A params function: the settings rule `name`'s output depends on, for the job's dataset. Rules after
    read_pairs see a pairs dataset's BEIR tables as its corpus, queries and qrels."""

    def params(wildcards):
        settings = DATASETS[wildcards.dataset]
        if name != "read_pairs":
            settings = settings | beir_sources(wildcards.dataset)
        return rule_settings(name, settings)

    return params


def provenance_for(wildcards):
    """The settings a provenance sidecar records, as configured."""
    return provenance_settings(DATASETS[wildcards.dataset])


def job_setting(key):
    """A function returning one setting of the job's dataset (for resources and threads)."""
    return lambda wildcards: DATASETS[wildcards.dataset][key]


def all_outputs():
    """Per dataset: negatives, selection report, the configured training files, the run report's figures
    and tables, and the audit when it has something to measure against."""
    targets = []
    for name, settings in sorted(DATASETS.items()):
        targets += [f"results/{name}/negatives.jsonl", f"results/{name}/selection.json"]
        targets += [
            f"results/{name}/report/{part}"
            for part in ("summary.html", "scores.png", "ranks.png", "examples.html")
        ]
        for fmt in settings["train_formats"]:
            ext = "jsonl" if fmt == "flag" else "parquet"
            targets.append(f"results/{name}/train/{fmt}.{ext}")
        if settings["audit_qrels"] or settings["audit_holdout"]:
            targets.append(f"results/{name}/audit.json")
    return targets


def pair_inputs(wildcards):
    """The local pair file (or folder of a downloaded hub dataset) and corpus of a pairs dataset."""
    settings = DATASETS[wildcards.dataset]
    inputs = {}
    for key in ("pairs", "corpus"):
        if settings[key] is not None and is_local_data(settings[key]):
            inputs[key] = split_ref(settings[key])[0]
    return inputs


def prepare_inputs(wildcards):
    """The corpus, queries and qrels files that exist locally (hub ids are not files); for a pairs
    dataset, read_pairs' tables and manifest."""
    sources = beir_sources(wildcards.dataset)
    inputs = {key: ref for key, ref in sources.items() if is_local_data(ref)}
    if DATASETS[wildcards.dataset]["pairs"] is not None:
        inputs["pairs_manifest"] = (
            f"results/{wildcards.dataset}/read_pairs/manifest.json"
        )
    return inputs


def judgment_inputs(wildcards):
    """The prepared corpus, and the audit and finetune qrels and the queries where they are local files."""
    settings = DATASETS[wildcards.dataset] | beir_sources(wildcards.dataset)
    inputs = {"corpus_dir": f"results/{wildcards.dataset}/prepare/corpus"}
    for key in ("audit_qrels", "finetune_eval_qrels"):
        if settings[key] and is_local_data(settings[key]):
            inputs[key] = settings[key]
    if len(inputs) > 1 and is_local_data(settings["queries"]):
        inputs["queries"] = settings["queries"]
    return inputs


def embedding_shards(part):
    """All shard files of the corpus or query embeddings of the job's dataset."""

    def shards(wildcards):
        return gather.embed(
            f"results/{wildcards.dataset}/embed/{part}/{{scatteritem}}.npy"
        )

    return shards


def search_index(wildcards):
    """The prebuilt FAISS index that every search shard loads; a flat index is built in memory instead."""
    if DATASETS[wildcards.dataset]["index"] == "flat":
        return []
    return f"results/{wildcards.dataset}/search/index.faiss"


def index_inputs(wildcards):
    """An IVF index is merged from parts added per embedding shard; an HNSW graph is built in one job."""
    dataset = wildcards.dataset
    if DATASETS[dataset]["index"] in ("ivf", "ivfpq"):
        return {
            "parts": gather.embed(
                f"results/{dataset}/search/index/parts/{{scatteritem}}.faiss"
            )
        }
    return {"corpus": embedding_shards("corpus")(wildcards)}


def candidate_shards(wildcards):
    return gather.search(
        f"results/{wildcards.dataset}/search/candidates/{{scatteritem}}.parquet"
    )


def score_shards(wildcards):
    return gather.score(
        f"results/{wildcards.dataset}/score/shards/{{scatteritem}}.parquet"
    )


def export_inputs(wildcards):
    """Search results and corpus embeddings, plus cross-encoder scores when a `ce` is configured."""
    inputs = {
        "candidates": f"results/{wildcards.dataset}/search/candidates.parquet",
        "qrels": f"results/{wildcards.dataset}/search/qrels_cosine.parquet",
        "corpus": embedding_shards("corpus")(wildcards),
        "queries": embedding_shards("queries")(wildcards),
        "corpus_dir": f"results/{wildcards.dataset}/prepare/corpus",
        "manifest": f"results/{wildcards.dataset}/prepare/manifest.json",
    }
    if DATASETS[wildcards.dataset]["ce"] is not None:
        inputs["scores"] = f"results/{wildcards.dataset}/score/pair_scores.parquet"
    return inputs


def audit_inputs(wildcards):
    """Everything selection reads, plus the judgments the audit measures against."""
    settings = DATASETS[wildcards.dataset] | beir_sources(wildcards.dataset)
    inputs = export_inputs(wildcards)
    inputs["holdout"] = f"results/{wildcards.dataset}/prepare/holdout.parquet"
    inputs["judgments"] = f"results/{wildcards.dataset}/prepare/judgments.parquet"
    return inputs


def finetune_inputs(wildcards):
    """The mined negatives and texts, plus the evaluation qrels and queries when they are local files."""
    settings = DATASETS[wildcards.dataset] | beir_sources(wildcards.dataset)
    if not settings["finetune_eval_qrels"]:
        raise WorkflowError(
            f"finetune of dataset {wildcards.dataset} needs finetune_eval_qrels (qrels to evaluate nDCG@10 on)"
        )
    inputs = {
        "negatives": f"results/{wildcards.dataset}/negatives.jsonl",
        "corpus_dir": f"results/{wildcards.dataset}/prepare/corpus",
        "queries_dir": f"results/{wildcards.dataset}/prepare/queries",
        "manifest": f"results/{wildcards.dataset}/prepare/manifest.json",
        "judgments": f"results/{wildcards.dataset}/prepare/judgments.parquet",
    }
    return inputs
