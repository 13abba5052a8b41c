"""Stage 2: embed one shard of a tokenized dataset into a memory-mappable `.npy` of unit vectors."""

from __future__ import annotations

import logging

import numpy as np

from negflow.errors import InputError
from negflow.files import atomic_output
from negflow.shards import parse_shard, shard_range

log = logging.getLogger("negflow")


def embed_shard(
    parts: list[tuple[str, str]],
    shard: str,
    model_ref: str,
    seq_len: int | None,
    dtype_setting: str,
    device_setting: str,
    limits,
    options=None,
    truncate_dim: int | None = None,
    pass_path: str | None = None,
    prepared_manifest: str | None = None,
) -> dict[str, int]:
    """Embed shard `I-of-N` of each (tokenized dataset folder, output .npy) pair with one loaded model:
    the model's own pooling, cut to `truncate_dim`, L2-normalised so inner product = cosine. Returns rows
    written per output; the device and precision it ran with go to `pass_path`. With `prepared_manifest`,
    a model whose tokenizer is not the one the tokens came from is refused before anything is embedded."""
    from negflow.models import (
        compute_dtype,
        load_embedding_model,
        pick_device,
        run_model,
        tokenizer_sha256,
        write_model_pass,
    )
    from negflow.store import load_extras, load_tokens, read_manifest

    index, count = parse_shard(shard)
    device = pick_device(device_setting)
    dtype = compute_dtype(dtype_setting, device)
    model = load_embedding_model(model_ref, device, seq_len, options, truncate_dim)
    if prepared_manifest is not None:
        tokenized_with = read_manifest(prepared_manifest).tokenizer_sha256
        if tokenized_with is None:
            raise InputError(f"{prepared_manifest}: written before prepare recorded its tokenizer; rerun prepare")
        if tokenized_with != tokenizer_sha256(model):
            raise InputError(
                f"{model_ref}: its tokenizer is not the one the corpus and queries were tokenized with "
                f"({prepared_manifest}: tokenizer_sha256 {tokenized_with}); a round's model must keep its "
                "dataset's tokenizer, and another model needs a dataset of its own"
            )
    dim = model.get_embedding_dimension()
    written = {}
    for dataset_dir, out_path in parts:
        rows = load_tokens(dataset_dir)
        part = shard_range(rows.num_rows, index, count)
        rows = rows.slice(part.start, len(part))
        log.info(
            "embedding rows %d-%d of %s (shard %s) on %s, dtype %s, dim %d",
            part.start,
            part.stop,
            dataset_dir,
            shard,
            device,
            dtype or "fp32",
            dim,
        )
        extras = load_extras(dataset_dir)
        with atomic_output(out_path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(part), dim))
            for idx, emb in run_model(
                model, rows, extras, "sentence_embedding", limits, device, dtype, f"embed {shard}", unit_vectors(model)
            ):
                out[idx] = emb
            out.flush()
            del out
        log.info("wrote %d embeddings to %s", len(part), out_path)
        written[out_path] = len(part)
    if pass_path is not None:
        write_model_pass(pass_path, shard, device, dtype)
    return written


def unit_vectors(model):
    """What negflow stores of the model's sentence embeddings: the first `truncate_dim` dimensions
    (Matryoshka, as `encode` cuts them), L2-normalised on the device so inner product = cosine."""
    import torch

    dim = model.truncate_dim

    def transform(embeddings):
        return torch.nn.functional.normalize(embeddings[:, :dim], dim=-1)

    return transform
