"""Helpers shared by the rules: per-dataset settings, the params each stage depends on, input lists."""

import os
import sys
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError

sys.path.insert(0, os.path.join(workflow.basedir, "scripts"))

from negflow import layout
from negflow.config import dataset_settings, load_schema, scatter_counts
from negflow.dependencies import provenance_settings, rule_settings, script_modules
from negflow.errors import ConfigError
from negflow.hooks import cancel_scheduler_timers
from negflow.refs import is_local_data, split_ref
from negflow.rounds import (
    mined_by,
    prepared_by,
    round_dataset,
    round_datasets,
    round_model,
    rounded_pattern,
    training_start,
)
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
    # each mining round's own embed, search and selection
    DATASETS |= round_datasets(DATASETS)
    # the datasets whose own negatives and audit are copies of their last round's
    ROUNDED_DATASETS = rounded_pattern(DATASETS)
    SCATTER = scatter_counts(config, SCHEMA)
except ConfigError as e:
    raise WorkflowError(str(e)) from None


def code_of(script):
    """The library files `scripts/{script}.py` imports, directly or not. Snakemake's code trigger sees only
    the script itself, so these are inputs: editing one reruns the rules that use it (and what depends on
    them)."""
    return script_modules(os.path.join(workflow.basedir, "scripts", f"{script}.py"))


# The rules a round never runs: it reads its dataset's prepared files.
PREPARING_RULES = ("read_pairs", "prepare", "prepare_judgments")


def settings_for(name):
    """A params function: the settings rule `name`'s output depends on, for the job's dataset (after
    prepare, a dataset with rounds has its last round's: that round's model mined what it selects).
    """

    def params(wildcards):
        dataset = wildcards.dataset
        if name not in PREPARING_RULES:
            dataset = mined_by(DATASETS, dataset)
        return rule_settings(name, DATASETS[dataset])

    return params


def provenance_for(wildcards):
    """The settings a provenance sidecar records, as configured (with rounds, the last round's)."""
    return provenance_settings(DATASETS[mined_by(DATASETS, wildcards.dataset)])


def job_setting(key):
    """A function returning one setting of the job's dataset (for resources and threads)."""
    return lambda wildcards: DATASETS[wildcards.dataset][key]


def of_dataset(path, wildcards):
    """A mining or selection rule's output path (`rules.<rule>.output.<name>`) for the job's dataset (a
    dataset with rounds: its last round's); a shard pattern keeps its `{scatteritem}` for `gather`.
    """
    dataset = mined_by(DATASETS, wildcards.dataset)
    return path.format(dataset=dataset, scatteritem="{scatteritem}")


def of_prepared(path, wildcards):
    """The output path of a rule that runs once for a dataset and all its rounds (its preparing rules, and
    the candidate sources other than the dense search) for the job's dataset: a round's is its dataset's.
    """
    dataset = prepared_by(DATASETS, wildcards.dataset)
    return path.format(dataset=dataset, scatteritem="{scatteritem}")


def prepared(key, rule="prepare"):
    """An input function: output `key` of a preparing rule for the job's dataset (of_prepared)."""
    return lambda wildcards: of_prepared(getattr(rules, rule).output[key], wildcards)


def all_outputs():
    """Per dataset: negatives, selection report, the configured training files, the run report's figures
    and tables, and the audit when it has something to measure against."""
    targets = []
    for name, settings in sorted(DATASETS.items()):
        if "model_source_of" in settings or "round_of" in settings:
            continue  # a candidate source, a round: its dataset's rules ask for what they need
        audited = bool(settings["audit_qrels"] or settings["audit_holdout"])
        if (
            settings["rounds"] > 1
        ):  # every round's negatives (and audit), the rounds side by side
            for r in range(1, settings["rounds"] + 1):
                per_round = [
                    rules.export_negatives.output.negatives,
                    rules.export_negatives.output.report,
                ]
                per_round += [rules.audit.output.report] if audited else []
                targets += [p.format(dataset=round_dataset(name, r)) for p in per_round]
            targets += [p.format(dataset=name) for p in rules.plot_rounds.output]
        files = [
            rules.export_negatives.output.negatives,
            rules.export_negatives.output.report,
        ]
        files += rules.plot_report.output
        if audited:
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
            key: of_prepared(rules.read_pairs.output[key], wildcards) for key in keys
        }
    return {key: settings[key] for key in keys if is_local_data(settings[key])}


def prepare_inputs(wildcards):
    """The corpus, queries and qrels prepare reads, and a pairs dataset's read_pairs manifest."""
    settings = DATASETS[wildcards.dataset]
    inputs = beir_inputs(settings, wildcards, ("corpus", "queries", "qrels"))
    if settings["pairs"] is not None:
        inputs["pairs_manifest"] = of_prepared(
            rules.read_pairs.output.manifest, wildcards
        )
    return inputs


def judgment_inputs(wildcards):
    """The prepared corpus, and the audit and finetune qrels and the queries where they are local files."""
    settings = DATASETS[wildcards.dataset]
    inputs = {"corpus_dir": of_prepared(rules.prepare.output.corpus, wildcards)}
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
    """BM25's shards, searched once for a dataset and all its rounds (of_prepared)."""
    return gather.search(of_prepared(rules.search_bm25.output.candidates, wildcards))


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
    """Each candidate source's table, by source name, for fuse_candidates: the dense search's of the job's
    dataset, the others' (the same in every round) of the dataset that prepared it."""
    dataset, prepared = wildcards.dataset, prepared_by(DATASETS, wildcards.dataset)
    tables = {}
    for source in DATASETS[dataset]["candidate_sources"]:
        name = source_name(source)
        if name == "dense":
            path = layout.run_file(layout.merge_candidates.candidates, dataset)
        elif name == "bm25":
            path = layout.run_file(layout.merge_bm25_candidates.candidates, prepared)
        elif name.startswith("model_"):  # its own dataset's search
            own = model_source_dataset(prepared, name)
            path = layout.run_file(layout.merge_candidates.candidates, own)
        else:
            path = layout.run_file(layout.read_run.candidates, prepared, source=name)
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
        "corpus_dir": of_prepared(rules.prepare.output.corpus, wildcards),
        "manifest": of_prepared(rules.prepare.output.manifest, wildcards),
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
        "holdout": of_prepared(rules.prepare.output.holdout, wildcards),
        "judgments": of_prepared(rules.prepare_judgments.output.judgments, wildcards),
    }


def finetune_inputs(wildcards):
    """The mined negatives and texts, plus the judgments it evaluates on."""
    if not DATASETS[wildcards.dataset]["finetune_eval_qrels"]:
        raise WorkflowError(
            f"finetune of dataset {wildcards.dataset} needs finetune_eval_qrels (qrels to evaluate nDCG@10 on)"
        )
    return {
        "negatives": of_dataset(rules.export_negatives.output.negatives, wildcards),
        "corpus_dir": of_prepared(rules.prepare.output.corpus, wildcards),
        "queries_dir": of_prepared(rules.prepare.output.queries, wildcards),
        "manifest": of_prepared(rules.prepare.output.manifest, wildcards),
        "judgments": of_prepared(rules.prepare_judgments.output.judgments, wildcards),
    }


def round_model_input(wildcards):
    """A round's model (round 2 on), which its embed loads: the model train_round wrote."""
    settings = DATASETS[wildcards.dataset]
    if settings.get("round", 1) < 2:
        return {}
    return {"model": round_model(settings["round_of"], settings["round"])}


def training_inputs(wildcards):
    """What a round trains on: the previous round's negatives and the prepared texts, and the previous
    round's model where it starts from that one."""
    settings = DATASETS[wildcards.dataset]
    base, previous = settings["round_of"], round_dataset(
        settings["round_of"], settings["round"] - 1
    )
    inputs = {
        "negatives": layout.run_file(layout.export_negatives.negatives, previous),
        "corpus_dir": of_prepared(rules.prepare.output.corpus, wildcards),
        "queries_dir": of_prepared(rules.prepare.output.queries, wildcards),
    }
    start = training_start(DATASETS, wildcards.dataset)
    if start["embedding"] != DATASETS[base]["embedding"]:
        inputs["start"] = start["embedding"]
    return inputs


def training_start_of(wildcards):
    """The model a round's training starts from (train_round's `start` param)."""
    return training_start(DATASETS, wildcards.dataset)


def rounds_inputs(wildcards):
    """Every round's candidates and selection report, its audit where the dataset is audited and its
    calibration under `selection: auto`, in round order, for plot_rounds."""
    settings = DATASETS[wildcards.dataset]
    rounds = [
        round_dataset(wildcards.dataset, r) for r in range(1, settings["rounds"] + 1)
    ]
    audited = settings["audit_qrels"] or settings["audit_holdout"]
    return {
        "candidates": [candidate_table(SimpleNamespace(dataset=r)) for r in rounds],
        "selections": [
            layout.run_file(layout.export_negatives.report, r) for r in rounds
        ],
        "audits": (
            [layout.run_file(layout.audit.report, r) for r in rounds] if audited else []
        ),
        "calibrations": (
            [layout.run_file(layout.calibrate_selection.calibration, r) for r in rounds]
            if settings["selection"] == "auto"
            else []
        ),
    }
