"""Provenance sidecars: enough to tell, months later, which data, models and settings made a file."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from negflow.files import write_json
from negflow.refs import is_local_data, resolve_model_ref
from negflow.shards import parse_shard
from negflow.store import read_manifest

WEIGHT_FILES = re.compile(r"\.(safetensors|bin|pt|onnx)$")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model) -> str:
    """A torch module's parameters and buffers as they are in memory (a model just trained has no file to
    hash): each tensor's name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)}:".encode())
        digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(ref: str, revision: str | None = None) -> dict:
    """A local input file with its size and hash; a local folder of a hub dataset with those of each file in
    it; a hub dataset id with its configured `revision` and, when it is cached here, the commit that resolves
    to."""
    if is_local_data(ref) and os.path.isfile(ref):
        return {"path": os.path.abspath(ref), "bytes": os.path.getsize(ref), "sha256": file_sha256(ref)}
    if is_local_data(ref) and os.path.isdir(ref):
        files = sorted(p for p in Path(ref).rglob("*") if p.is_file() and ".cache" not in p.parts)
        return {
            "path": os.path.abspath(ref),
            "files": {str(p.relative_to(ref)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files},
        }
    info = {"hub_id": ref, "configured_revision": revision}
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(ref, repo_type="dataset", revision=revision, local_files_only=True)
    except Exception:  # not cached here: the reference is all we can record
        return info
    match = re.search(r"/snapshots/([0-9a-f]{40})", folder)
    return info | {"revision": match[1] if match else None}


def model_fingerprint(ref: str, revision: str | None = None) -> dict:
    """A model by reference and configured revision, with the hub commit when it resolves to a cached
    snapshot and the hash of each weight file when it is on disk."""
    info: dict = {"ref": ref, "configured_revision": revision}
    folder = resolve_model_ref(ref)
    if not os.path.isdir(folder):
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(ref, revision=revision, local_files_only=True)
        except Exception:  # not cached here: the reference is all we can record
            return info
    match = re.search(r"/snapshots/([0-9a-f]{40})", folder)
    if match:
        info["revision"] = match[1]
    info["path"] = os.path.abspath(folder)
    weights = [p for p in sorted(Path(folder).rglob("*")) if WEIGHT_FILES.search(p.name)]
    info["weights_sha256"] = {str(p.relative_to(folder)): file_sha256(p) for p in weights}
    return info


def negflow_version() -> str:
    try:
        return version("negflow")
    except PackageNotFoundError:
        return "unknown"


def grouped_passes(paths: Iterable[str]) -> list[dict]:
    """One model's shard jobs' records (`models.write_model_pass`), the shards that ran alike in one entry:
    a 1000-shard run stays short, and shards that ran on another device or precision stand out."""
    groups: dict[str, tuple[list[str], dict]] = {}  # by the record less its shard: its shards, the record
    for path in paths:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        shard = record.pop("shard")
        groups.setdefault(json.dumps(record, sort_keys=True), ([], record))[0].append(shard)
    entries = [{"shards": sorted(shards, key=parse_shard), **record} for shards, record in groups.values()]
    return sorted(entries, key=lambda entry: parse_shard(entry["shards"][0]))


def build_provenance(inputs: Mapping, settings: dict, calibration: dict | None = None) -> dict:
    """The part shared by every export of a dataset: inputs, models with the device and precision of each
    of their passes, prompts, settings, and under `selection: auto` the settings the calibration chose
    (`calibration.read_choice`). `inputs`: export's, of which the prepare `manifest`, `embedding_passes`
    and with a `ce` `ce_passes` are read."""
    manifest = read_manifest(inputs["manifest"])
    models = {"embedding": model_fingerprint(settings["embedding"], settings["embedding_revision"])}
    models["embedding"]["passes"] = grouped_passes(inputs["embedding_passes"])
    if settings.get("ce"):
        models["ce"] = model_fingerprint(settings["ce"], settings["ce_revision"])
        models["ce"]["passes"] = grouped_passes(inputs["ce_passes"])
    return {
        "negflow_version": negflow_version(),
        "inputs": manifest.inputs,
        **({"pairs": manifest.pairs} if manifest.pairs is not None else {}),
        "models": models,
        "query_prompt": manifest.query_prompt,
        "doc_prompt": manifest.doc_prompt,
        "embedding_seq_len": manifest.embedding_seq_len,
        "ce_seq_len": settings.get("ce_seq_len") if settings.get("ce") else None,
        "seed": settings["seed"],
        "settings": settings,
        **({"selection_chosen": {k: calibration[k] for k in ("name", "settings", "reason")}} if calibration else {}),
    }


def shared_provenance(sidecar_path: str) -> dict:
    """The dataset-wide part of an export's sidecar, to build the sidecars of files derived from it."""
    record = json.loads(Path(sidecar_path).read_text(encoding="utf-8"))
    return {k: v for k, v in record.items() if k not in record["own_fields"]}


def write_sidecar(export_path: str, provenance: dict, **details) -> str:
    """Write EXPORT.provenance.json (beside the export, extension replaced) with the export's own hash."""
    path = Path(export_path)
    sidecar = path.with_name(path.name.split(".")[0] + ".provenance.json")
    own = {"file": path.name, "sha256": file_sha256(path), **details}
    record = {**own, "own_fields": [*own, "own_fields"], **provenance}
    write_json(sidecar, record, ensure_ascii=False)
    return str(sidecar)
