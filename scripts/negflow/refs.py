"""Where data and models are: local files and folders, `package:` models inside installed Python packages,
or hub ids with an optional `:SPLIT`. Stages resolve their references with these, and the config checks
them before any job runs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from negflow.errors import ConfigError


def split_ref(ref: str) -> tuple[str, str | None]:
    """`PATH`, `DIR[:SPLIT]` or `HUB_ID[:SPLIT]` -> (source, split or None)."""
    if os.path.exists(ref) or ":" not in ref:
        return ref, None
    source, _, split = ref.rpartition(":")
    return source, split or None


def resolve_data_ref(ref: str | None, root: str | None) -> str | None:
    """A relative data reference under `data_root` becomes a path there when it names something that exists
    there (a file, a folder, or a folder with a `:SPLIT` suffix) or has a data-file suffix; hub ids (and
    everything without a root) pass through."""
    if ref is None or root is None or os.path.isabs(ref) or ref.startswith("~"):
        return ref
    if is_local_data(ref) or os.path.exists(os.path.join(root, split_ref(ref)[0])):
        return os.path.join(root, ref)
    return ref


PACKAGE_PREFIX = "package:"


def looks_like_path(ref: str) -> bool:
    """A reference is a local path when it cannot be a hub id ('org/name' has at most one slash)."""
    return ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1 or os.path.exists(ref)


def is_hub_model(ref: str) -> bool:
    """A model reference that names a hub repository: neither a local folder nor a `package:` model."""
    return not (ref.startswith(PACKAGE_PREFIX) or looks_like_path(ref))


def floating_reference(ref: str, revision: str | None) -> bool:
    """A hub model not pinned to a commit: its branch or tag (`main` when none) can move to other weights, so
    the same config may mine differently tomorrow."""
    return is_hub_model(ref) and not (revision and re.fullmatch(r"[0-9a-f]{40}", revision))


def resolve_model_ref(ref: str) -> str:
    """Turn `package:MODULE/SUBDIR` into the folder inside that installed package; other refs pass through."""
    if ref.startswith(PACKAGE_PREFIX):
        module, _, subdir = ref[len(PACKAGE_PREFIX) :].partition("/")
        import importlib.util

        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"model {ref}: Python package '{module}' is not installed")
        return str(Path(next(iter(spec.submodule_search_locations)), subdir))
    return os.path.expanduser(ref) if ref.startswith("~") else ref


def check_model_ref(ref: str, where: str, kind: str | None = None) -> None:
    """Fail before any job on a local model folder that does not exist or holds no model of `kind`
    ('embedding': a sentence-transformers or transformers model; 'ce': a 1-label sequence classifier).
    Only the folder's JSON files are read; hub ids are checked when loaded."""
    try:
        resolved = resolve_model_ref(ref)
    except ConfigError as e:
        raise ConfigError(f"config: {where}: {e}") from None
    if is_hub_model(ref):
        return
    if not os.path.isdir(resolved):
        raise ConfigError(f"config: {where}: model folder '{resolved}' does not exist")
    folder = Path(resolved)
    if kind == "embedding" and not any((folder / f).is_file() for f in ("modules.json", "config.json")):
        raise ConfigError(
            f"config: {where}: '{resolved}' is not a sentence-transformers model (no modules.json or config.json)"
        )
    if kind == "ce":
        config_file = folder / "config.json"
        try:
            hf_config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            message = f"config: {where}: '{resolved}' is not a CrossEncoder (no readable config.json)"
            raise ConfigError(message) from None
        architectures = hf_config.get("architectures") or []
        labels = len(hf_config.get("id2label") or {}) or hf_config.get("num_labels", 2)
        if not any(a.endswith("ForSequenceClassification") for a in architectures) or labels != 1:
            raise ConfigError(
                f"config: {where}: '{resolved}' is not a 1-label CrossEncoder (architectures {architectures}, "
                f"labels: {labels})"
            )


def is_local_data(ref: str) -> bool:
    """Data references: local files are paths or end in a BEIR file suffix; everything else is a hub id."""
    return looks_like_path(ref) or bool(re.search(r"\.(jsonl|tsv|json)(\.gz)?$|\.parquet$", ref))
