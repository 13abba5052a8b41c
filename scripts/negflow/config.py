"""Merge and validate per-dataset settings, so a bad key stops the run before any job starts."""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path

import jsonschema
import yaml

from negflow.beir import READ_ERRORS, open_binary, read_error
from negflow.errors import ConfigError
from negflow.layout import DATASET_NAME_RULE, is_dataset_name
from negflow.refs import check_model_ref, is_hub_model, is_local_data, resolve_data_ref
from negflow.selection import SelectionSettings
from negflow.sources import model_source_settings, source_names


def load_schema(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def setting_defaults(schema: dict) -> dict:
    """Defaults of every per-dataset setting, as the schema declares them."""
    props = schema["$defs"]["settings"]["properties"]
    return {key: copy.deepcopy(spec.get("default")) for key, spec in props.items()}


def setting_schemas(schema: dict, *extra_defs: str) -> dict[str, dict]:
    """The schema of every per-dataset setting, plus those of the schema's `extra_defs` (e.g. a dataset's
    data keys), by key."""
    props = dict(schema["$defs"]["settings"]["properties"])
    for name in extra_defs:
        props |= schema["$defs"][name].get("properties", {})
    return props


def known_keys(schema: dict, *extra_defs: str) -> set[str]:
    """Every per-dataset setting, plus the keys of the schema's `extra_defs` (e.g. a dataset's data keys)."""
    return set(setting_schemas(schema, *extra_defs))


def did_you_mean(key: str, known: set[str], spell=str) -> str:
    """' (did you mean X?)' for the known key closest to a misspelt one, or nothing."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean '{spell(close[0])}'?)" if close else ""


def _reject_unknown(block: dict, known: set[str], where: str) -> None:
    for key in block:
        if key not in known:
            raise ConfigError(f"config: {where}: unknown key '{key}'{did_you_mean(key, known)}")


def _validate(instance: dict, schema: dict, where: str) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path)
        location = f"{where}.{key}" if key else where
        raise ConfigError(f"config: {location}: {error.message}")


WORKFLOW_KEYS = ("datasets", "scatter")  # top-level only: they shape the DAG, not one dataset's results


def scatter_counts(config: dict, schema: dict) -> dict[str, int]:
    """Shard counts of the scattered stages: schema defaults < the config's `scatter` block."""
    spec = schema["properties"]["scatter"]
    counts = {stage: sub["default"] for stage, sub in spec["properties"].items()}
    block = config.get("scatter") or {}
    if not isinstance(block, dict):
        raise ConfigError("config: scatter: must be a mapping of stage to shard count, e.g. {embed: 4}")
    counts |= block
    _validate(counts, spec, "scatter")
    return counts


def dataset_settings(config: dict, schema: dict, overrides_dir: str | os.PathLike | None) -> dict[str, dict]:
    """Validated settings of every dataset: schema defaults < top-level keys < overrides file < dataset block."""
    top = {k: v for k, v in config.items() if k not in WORKFLOW_KEYS}
    _reject_unknown(config, known_keys(schema) | set(WORKFLOW_KEYS), "top level")
    _validate(top, schema["$defs"]["settings"] | {"$defs": schema["$defs"]}, "top level")
    datasets = config.get("datasets") or {}
    if not isinstance(datasets, dict):
        raise ConfigError("config: datasets: must be a mapping of dataset name to settings")
    dataset_keys = known_keys(schema, "dataset")
    merged_all = {}
    for name, block in datasets.items():
        if not is_dataset_name(name):
            raise ConfigError(f"config: datasets.{name}: {DATASET_NAME_RULE}")
        if not isinstance(block, dict):
            raise ConfigError(f"config: datasets.{name}: must be a mapping with corpus, queries and qrels")
        merged = setting_defaults(schema) | top
        override_file = Path(overrides_dir, f"{name}.yaml") if overrides_dir else None
        if override_file is not None and override_file.is_file():
            override = yaml.safe_load(override_file.read_text(encoding="utf-8")) or {}
            _reject_unknown(override, known_keys(schema), str(override_file))
            merged |= override
        _reject_unknown(block, dataset_keys, f"datasets.{name}")
        check_data_sources(block, f"datasets.{name}")
        merged |= block
        _validate(merged, schema["$defs"]["dataset"] | {"$defs": schema["$defs"]}, f"datasets.{name}")
        for key in DATA_KEYS:
            merged[key] = resolve_data_ref(merged.get(key), merged["data_root"])
        check_model_ref(merged["embedding"], f"datasets.{name}.embedding", "embedding")
        if merged["ce"] is not None:
            check_model_ref(merged["ce"], f"datasets.{name}.ce", "ce")
        if merged["pairs_revision"] is not None and (merged["pairs"] is None or is_local_data(merged["pairs"])):
            raise ConfigError(
                f"config: datasets.{name}.pairs_revision: '{merged['pairs_revision']}' pins a hub pair dataset, but "
                f"pairs is {'not set' if merged['pairs'] is None else repr(merged['pairs']) + ', a local file'}"
            )
        if merged["pairs"] is None:
            check_corpus_size(merged["corpus"], merged["candidates"], f"datasets.{name}.candidates")
        elif merged["min_positive_score"] != 1:
            raise ConfigError(
                f"config: datasets.{name}.min_positive_score: a pairs dataset grades every positive 1, so it must "
                f"be 1 (got {merged['min_positive_score']})"
            )
        if merged["selection_score"] == "ce" and merged["ce"] is None:
            raise ConfigError(f"config: datasets.{name}.selection_score: 'ce' needs a cross-encoder in 'ce'")
        check_model_settings(merged, f"datasets.{name}")
        merged["candidate_sources"] = check_candidate_sources(merged, f"datasets.{name}")
        try:
            SelectionSettings.from_settings(merged)
        except ValueError as e:
            raise ConfigError(f"config: datasets.{name}: {e}") from None
        window_end = min(merged["candidates"], merged["range_max"] or merged["candidates"])
        if merged["num_negatives"] > window_end - merged["range_min"]:
            raise ConfigError(
                f"config: datasets.{name}.num_negatives: {merged['num_negatives']} negatives cannot come from "
                f"a window of {max(0, window_end - merged['range_min'])} candidates (ranks {merged['range_min']}"
                f"-{window_end}: range_min, range_max, candidates)"
            )
        merged_all[name] = merged
    return merged_all


TORCH_PRECISIONS = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def check_model_settings(merged: dict, where: str) -> None:
    """The model options fit together: cross-encoder options need a cross-encoder, a revision a hub model,
    a prompt is given as text or by name, a torch_dtype agrees with negflow's own precision setting, and
    an ivfpq index can split truncated vectors."""
    for key in ("ce_max", "ce_revision", "ce_model_kwargs"):
        if merged[key] not in (None, {}) and merged["ce"] is None:
            raise ConfigError(f"config: {where}.{key}: needs a cross-encoder in 'ce'")
    for kind in ("embedding", "ce"):
        revision = merged[f"{kind}_revision"]
        if revision is not None and merged[kind] is not None and not is_hub_model(merged[kind]):
            raise ConfigError(
                f"config: {where}.{kind}_revision: '{revision}' pins a hub model, but {kind} '{merged[kind]}' is a "
                "local folder or package: model"
            )
        kwargs = merged[f"{kind}_model_kwargs"]
        if "trust_remote_code" in kwargs:
            raise ConfigError(
                f"config: {where}.{kind}_model_kwargs.trust_remote_code: running a model's own code is the "
                "trust_remote_code setting's to allow, not the model's keyword arguments'; set trust_remote_code"
            )
        for key in ("torch_dtype", "dtype"):
            if key not in kwargs:
                continue
            wanted = TORCH_PRECISIONS.get(kwargs[key]) if isinstance(kwargs[key], str) else None
            if wanted != merged[f"{kind}_dtype"]:
                fix = f"set {kind}_dtype: {wanted}" if wanted else f"give one of {', '.join(TORCH_PRECISIONS)}"
                raise ConfigError(
                    f"config: {where}.{kind}_model_kwargs.{key}: {kwargs[key]!r} must agree with {kind}_dtype "
                    f"({merged[f'{kind}_dtype']}), which decides the compute precision: {fix}, or drop {key}"
                )
    for role in ("query", "doc"):
        if merged[f"{role}_prompt"] is not None and merged[f"{role}_prompt_name"] is not None:
            raise ConfigError(
                f"config: {where}.{role}_prompt_name: give the prompt as text ({role}_prompt) or by name "
                f"({role}_prompt_name), not both"
            )
    dim = merged["truncate_dim"]
    if merged["index"] == "ivfpq" and dim is not None and dim % merged["ivfpq_m"]:
        raise ConfigError(f"config: {where}.ivfpq_m: {merged['ivfpq_m']} must divide truncate_dim {dim}")


# Per-dataset data references: files (resolved against data_root when relative) or hub ids.
DATA_KEYS = ("pairs", "corpus", "queries", "qrels", "audit_qrels", "finetune_eval_qrels")


def check_data_sources(block: dict, where: str) -> None:
    """A dataset is BEIR files (corpus, queries, qrels) or a pair file (pairs, with an optional corpus)."""
    if "pairs" in block:
        extra = [key for key in ("queries", "qrels") if key in block]
        if extra:
            raise ConfigError(f"config: {where}: give either pairs (and optionally corpus) or {' and '.join(extra)}")
        return
    missing = [key for key in ("corpus", "queries", "qrels") if key not in block]
    if missing:
        raise ConfigError(
            f"config: {where}: needs corpus, queries and qrels (missing {', '.join(missing)}), or a pairs file"
        )


def check_candidate_sources(settings: dict, where: str) -> list:
    """The candidate sources with each run file's path resolved under `data_root`: each source once, run
    files that exist (and only on BEIR data: a pairs dataset's query ids are hashes no run file names), a
    second model that could load with its options, and a stemmer and stopword list bm25s knows."""
    sources = [
        {"run": resolve_data_ref(s["run"], settings["data_root"])} if isinstance(s, dict) and "run" in s else s
        for s in settings["candidate_sources"]
    ]
    names = source_names(sources)
    if len(set(names)) != len(names):
        raise ConfigError(f"config: {where}.candidate_sources: each source may be listed once (got {', '.join(names)})")
    for source in sources:
        if isinstance(source, dict) and "model" in source:
            check_model_ref(source["model"], f"{where}.candidate_sources", "embedding")
            check_model_settings(model_source_settings(settings, source), f"{where}.candidate_sources")
        elif isinstance(source, dict):
            if settings["pairs"] is not None:
                raise ConfigError(
                    f"config: {where}.candidate_sources: a run file names query ids, and a pairs dataset's queries "
                    "have none but hashes of their text; use run files with BEIR queries"
                )
            if not os.path.isfile(source["run"]):
                raise ConfigError(f"config: {where}.candidate_sources: run file {source['run']} not found")
    if "bm25" in sources:
        import Stemmer

        if settings["bm25_stemmer"] and settings["bm25_stemmer"] not in Stemmer.algorithms():
            raise ConfigError(
                f"config: {where}.bm25_stemmer: {settings['bm25_stemmer']!r} is not a Snowball stemmer "
                f"({', '.join(Stemmer.algorithms())})"
            )
        from bm25s.tokenization import Tokenizer

        try:
            Tokenizer(stopwords=settings["bm25_stopwords"] or None)
        except ValueError:
            raise ConfigError(
                f"config: {where}.bm25_stopwords: {settings['bm25_stopwords']!r} is not a stopword list bm25s has "
                "(en, de, nl, fr, es, pt, it, ru, sv, no, zh, tr, ko, da, or their English names)"
            ) from None
    return sources


def check_corpus_size(ref: str, candidates: int, where: str) -> None:
    """A local corpus with fewer documents than `candidates` cannot fill a query's candidate list: say so
    before any job. Reads at most candidates + 1 lines (a Parquet file's row count), so a large corpus costs
    nothing."""
    if not (is_local_data(ref) and os.path.isfile(ref)):
        return
    if ref.endswith(".parquet"):
        import pyarrow.parquet as pq

        documents = pq.ParquetFile(ref).metadata.num_rows
    else:
        documents = lines = 0
        with open_binary(ref) as f:
            try:
                for raw in f:
                    lines += 1
                    documents += bool(raw.strip())
                    if documents > candidates:
                        break
            except READ_ERRORS as e:
                raise ConfigError(str(read_error(ref, lines, e))) from None
    if documents > candidates:
        return
    raise ConfigError(
        f"config: {where}: {candidates} candidates per query asked for, but {ref} holds only {documents} documents"
    )
