"""Stage 2: embed one shard of a tokenized dataset into a memory-mappable `.npy` of unit vectors."""

from __future__ import annotations

import logging
import mmap
import re
from collections.abc import Iterator

import numpy as np

from negflow.files import atomic_output

log = logging.getLogger("negflow")


def parse_shard(shard: str) -> tuple[int, int]:
    """Snakemake's scatter item, 1-based, to a 0-based shard index and the count: '2-of-8' -> (1, 8)."""
    match = re.fullmatch(r"(\d+)-of-(\d+)", shard)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"shard must look like 'I-of-N' with 1 <= I <= N, got {shard!r}")
    return int(match[1]) - 1, int(match[2])


def in_shard_order(paths: list[str]) -> list[str]:
    """Shard files (named by their scatter item, `.../I-of-N.ext`) sorted by shard number, not by name."""
    return sorted(paths, key=lambda path: parse_shard(re.search(r"(\d+-of-\d+)\.\w+$", path)[1])[0])


def shard_range(n_rows: int, index: int, count: int) -> range:
    """Contiguous rows of shard `index` of `count`; shards differ in size by at most one row."""
    start = n_rows * index // count
    stop = n_rows * (index + 1) // count
    return range(start, stop)


def embed_shard(
    parts: list[tuple[str, str]],
    shard: str,
    model_ref: str,
    seq_len: int | None,
    dtype_setting: str,
    device_setting: str,
    limits,
) -> dict[str, int]:
    """Embed shard `I-of-N` of each (tokenized dataset folder, output .npy) pair with one loaded model:
    the model's own pooling, L2-normalised so inner product = cosine. Returns rows written per output."""
    from negflow.models import compute_dtype, load_embedding_model, pick_device, run_model
    from negflow.prepare import load_extras, load_tokens

    index, count = parse_shard(shard)
    device = pick_device(device_setting)
    dtype = compute_dtype(dtype_setting, device)
    model = load_embedding_model(model_ref, device, seq_len)
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
                model, rows, extras, "sentence_embedding", limits, device, dtype, f"embed {shard}", unit_vectors
            ):
                out[idx] = emb
            out.flush()
            del out
        log.info("wrote %d embeddings to %s", len(part), out_path)
        written[out_path] = len(part)
    return written


def unit_vectors(embeddings):
    """L2-normalised on the device: inner product = cosine."""
    import torch

    return torch.nn.functional.normalize(embeddings, dim=-1)


def _release(mapped: np.memmap) -> None:
    mapped._mmap.madvise(mmap.MADV_DONTNEED)


class ShardedEmbeddings:
    """Embedding shards read as one matrix without concatenating them in memory."""

    def __init__(self, paths: list[str]):
        self.parts = [np.load(p, mmap_mode="r") for p in in_shard_order(paths)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.dim = self.parts[0].shape[1]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        """Contiguous blocks of at most `rows` rows, in order, copied out of the mapping, whose pages are
        released after each block: a pass over the corpus holds one block in memory, not the corpus."""
        for part in self.parts:
            for start in range(0, len(part), rows):
                block = np.array(part[start : start + rows])
                _release(part)
                yield block

    def release(self) -> None:
        """Drop the mapped pages from this process (they stay in the page cache for the next read)."""
        for part in self.parts:
            _release(part)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows by global index, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self.parts[s][rows[sel] - self.offsets[s]]
        return out
