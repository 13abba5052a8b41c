"""Helpers shared by the rules: per-dataset settings, the params each stage depends on, input lists."""

import os
import sys

from snakemake.exceptions import WorkflowError

sys.path.insert(0, os.path.join(workflow.basedir, "scripts"))

from negflow import layout
from negflow.config import dataset_settings, load_schema, scatter_counts
from negflow.dependencies import provenance_settings, rule_settings, script_modules
from negflow.errors import ConfigError
from negflow.hooks import cancel_scheduler_timers
from negflow.refs import is_local_data, split_ref
from negflow.shards import SHARD_PATTERN
from negflow.sources import (
    is_fused,
    model_source_dataset,
    model_source_datasets,
    source_name,
)

try:
    SCHEMA = load_schema(os.path.join(workflow.basedir, "config", "schema.yaml"))
    DATASETS = dataset_settings(
        config, SCHEMA, os.path.join(workflow.basedir, "config", "datasets")
    )
    DATASETS |= model_source_datasets(
        DATASETS
    )  # a second model's own prepare/embed/search
    SCATTER = scatter_counts(config, SCHEMA)
except ConfigError as e:
    raise WorkflowError(str(e)) from None


def code_of(script):
    """The library files `scripts/{script}.py` imports, directly or not. Snakemake's code trigger sees only
    the script itself, so these are inputs: editing one reruns the rules that use it (and what depends on
    them)."""
    return script_modules(os.path.join(workflow.basedir, "scripts", f"{script}.py"))


def settings_for(name):
    """A params function: the settings rule `name`'s output depends on, for the job's dataset."""

    def params(wildcards):
        return rule_settings(name, DATASETS[wildcards.dataset])

    return params


def provenance_for(wildcards):
    """The settings a provenance sidecar records, as configured."""
    return provenance_settings(DATASETS[wildcards.dataset])


def job_setting(key):
    """A function returning one setting of the job's dataset (for resources and threads)."""
    return lambda wildcards: DATASETS[wildcards.dataset][key]


def of_dataset(path, wildcards):
    """A rule's output path (`rules.<rule>.output.<name>`) for the job's dataset; a shard pattern keeps its
    `{scatteritem}` for `gather`."""
    return path.format(dataset=wildcards.dataset, scatteritem="{scatteritem}")


def all_outputs():
    """Per dataset: negatives, selection report, the configured training files, the run report's figures
    and tables, and the audit when it has something to measure against."""
    targets = []
    for name, settings in sorted(DATASETS.items()):
        if "model_source_of" in settings:
            continue  # a candidate source: its dataset's fusion asks for what it needs
        files = [
            rules.export_negatives.output.negatives,
            rules.export_negatives.output.report,
        ]
        files += rules.plot_report.output
        if settings["audit_qrels"] or settings["audit_holdout"]:
            files.append(rules.audit.output.report)
        if settings["selection"] == "auto":
            files.append(rules.plot_calibration.output.figure)
        targets += [path.format(dataset=name) for path in files]
        for fmt in settings["train_formats"]:
            exporter = (
                rules.export_flag
                if fmt == "flag"
                else rules.export_sentence_transformers
            )
            targets.append(exporter.output.data.format(dataset=name, format=fmt))
    return targets


def pair_inputs(wildcards):
    """The local pair file (or folder of a downloaded hub dataset) and corpus of a pairs dataset."""
    settings = DATASETS[wildcards.dataset]
    inputs = {}
    for key in ("pairs", "corpus"):
        if settings[key] is not None and is_local_data(settings[key]):
            inputs[key] = split_ref(settings[key])[0]
    return inputs


def beir_inputs(settings, wildcards, keys):
    """The BEIR tables `keys` of a dataset that are files: read_pairs' tables for a pairs dataset, else the
    configured ones that are local (a hub id is a setting, not a file)."""
    if settings["pairs"] is not None:
        return {
            key: of_dataset(rules.read_pairs.output[key], wildcards) for key in keys
        }
    return {key: settings[key] for key in keys if is_local_data(settings[key])}


def prepare_inputs(wildcards):
    """The corpus, queries and qrels prepare reads, and a pairs dataset's read_pairs manifest."""
    settings = DATASETS[wildcards.dataset]
    inputs = beir_inputs(settings, wildcards, ("corpus", "queries", "qrels"))
    if settings["pairs"] is not None:
        inputs["pairs_manifest"] = of_dataset(
            rules.read_pairs.output.manifest, wildcards
        )
    return inputs


def judgment_inputs(wildcards):
    """The prepared corpus, and the audit and finetune qrels and the queries where they are local files."""
    settings = DATASETS[wildcards.dataset]
    inputs = {"corpus_dir": of_dataset(rules.prepare.output.corpus, wildcards)}
    for key in ("audit_qrels", "finetune_eval_qrels"):
        if settings[key] and is_local_data(settings[key]):
            inputs[key] = settings[key]
    if settings["audit_qrels"] or settings["finetune_eval_qrels"]:
        inputs |= beir_inputs(settings, wildcards, ("queries",))
    return inputs


def embedding_shards(part):
    """All shard files of the corpus or query embeddings of the job's dataset."""

    def shards(wildcards):
        return gather.embed(of_dataset(rules.embed.output[part], wildcards))

    return shards


def search_index(wildcards):
    """The prebuilt FAISS index that every search shard loads; a flat index is built in memory instead."""
    if DATASETS[wildcards.dataset]["index"] == "flat":
        return []
    return of_dataset(rules.build_index.output.index, wildcards)


def index_inputs(wildcards):
    """An IVF index is merged from parts added per embedding shard; an HNSW graph is built in one job."""
    if DATASETS[wildcards.dataset]["index"] in ("ivf", "ivfpq"):
        return {
            "parts": gather.embed(of_dataset(rules.add_to_index.output.part, wildcards))
        }
    return {"corpus": embedding_shards("corpus")(wildcards)}


def candidate_shards(wildcards):
    return gather.search(of_dataset(rules.search.output.candidates, wildcards))


def bm25_shards(wildcards):
    return gather.search(of_dataset(rules.search_bm25.output.candidates, wildcards))


def run_file(wildcards):
    """The run file of the job's `{source}`."""
    settings = DATASETS[wildcards.dataset]
    runs = {
        source_name(s): s["run"]
        for s in settings["candidate_sources"]
        if isinstance(s, dict) and "run" in s
    }
    return runs[wildcards.source]


def source_tables(wildcards):
    """Each candidate source's table, by source name, for fuse_candidates."""
    dataset = wildcards.dataset
    tables = {}
    for source in DATASETS[dataset]["candidate_sources"]:
        name = source_name(source)
        if name == "dense":
            path = layout.run_file(layout.merge_candidates.candidates, dataset)
        elif name == "bm25":
            path = layout.run_file(layout.merge_bm25_candidates.candidates, dataset)
        elif name.startswith("model_"):  # its own dataset's search
            own = model_source_dataset(dataset, name)
            path = layout.run_file(layout.merge_candidates.candidates, own)
        else:
            path = layout.run_file(layout.read_run.candidates, dataset, source=name)
        tables[name] = path
    return tables


def candidate_table(wildcards):
    """The candidates selection, scoring and the report read: the dense search's, or the fused sources'."""
    if is_fused(DATASETS[wildcards.dataset]["candidate_sources"]):
        return of_dataset(rules.fuse_candidates.output.candidates, wildcards)
    return of_dataset(rules.merge_candidates.output.candidates, wildcards)


def score_shards(wildcards):
    return gather.score(of_dataset(rules.score_pairs.output.scores, wildcards))


def selection_inputs(wildcards):
    """What selection reads (`Candidates.from_inputs`): the candidates, the qrels' cosines, the embeddings,
    the prepared corpus and manifest, and the cross-encoder's scores when a `ce` is configured.
    """
    inputs = {
        "candidates": candidate_table(wildcards),
        "qrels": of_dataset(rules.compute_qrels_cosines.output.cosines, wildcards),
        "corpus": embedding_shards("corpus")(wildcards),
        "queries": embedding_shards("queries")(wildcards),
        "corpus_dir": of_dataset(rules.prepare.output.corpus, wildcards),
        "manifest": of_dataset(rules.prepare.output.manifest, wildcards),
    }
    if DATASETS[wildcards.dataset]["ce"] is not None:
        inputs["scores"] = of_dataset(rules.merge_scores.output.scores, wildcards)
    return inputs


def export_inputs(wildcards):
    """What selection reads, plus with `selection: auto` the calibration that picks its settings."""
    inputs = selection_inputs(wildcards)
    if DATASETS[wildcards.dataset]["selection"] == "auto":
        inputs["calibration"] = of_dataset(
            rules.calibrate_selection.output.calibration, wildcards
        )
    return inputs


def model_passes(wildcards):
    """The device and precision records of the model stages an export's numbers come from (provenance):
    every embed shard's, and with a `ce` every score shard's."""
    passes = {
        "embedding_passes": gather.embed(
            of_dataset(rules.embed.output.model_pass, wildcards)
        )
    }
    if DATASETS[wildcards.dataset]["ce"] is not None:
        passes["ce_passes"] = gather.score(
            of_dataset(rules.score_pairs.output.model_pass, wildcards)
        )
    return passes


def audit_inputs(wildcards):
    """What export reads, plus the judgments the audit measures against."""
    return export_inputs(wildcards) | {
        "holdout": of_dataset(rules.prepare.output.holdout, wildcards),
        "judgments": of_dataset(rules.prepare_judgments.output.judgments, wildcards),
    }


def finetune_inputs(wildcards):
    """The mined negatives and texts, plus the judgments it evaluates on."""
    if not DATASETS[wildcards.dataset]["finetune_eval_qrels"]:
        raise WorkflowError(
            f"finetune of dataset {wildcards.dataset} needs finetune_eval_qrels (qrels to evaluate nDCG@10 on)"
        )
    return {
        "negatives": of_dataset(rules.export_negatives.output.negatives, wildcards),
        "corpus_dir": of_dataset(rules.prepare.output.corpus, wildcards),
        "queries_dir": of_dataset(rules.prepare.output.queries, wildcards),
        "manifest": of_dataset(rules.prepare.output.manifest, wildcards),
        "judgments": of_dataset(rules.prepare_judgments.output.judgments, wildcards),
    }
