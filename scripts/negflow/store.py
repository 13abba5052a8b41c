"""Where stages keep what they pass on: tokenized datasets (Arrow files in `datasets`' save_to_disk layout,
read with pyarrow alone, memory-mapped) with their batch-level extras, and embedding shards read as one
matrix."""

from __future__ import annotations

import json
import mmap
import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from negflow.files import write_json
from negflow.progress import ProgressBar
from negflow.shards import in_shard_order

EXTRAS_FILE = "negflow_features.json"  # batch-level model inputs beside a tokenized dataset
TOKENIZE_ROWS = 8_192  # rows a worker tokenizes at once: enough for length-sorted chunks to pad little
_encode = None  # the tokenizing function, set before worker processes fork (they inherit it with the model)


def _encode_rows(inputs: list) -> tuple[dict, dict]:
    return _encode(inputs)  # in a worker: the forked copy of `_encode`; Arrow columns pickle as buffers


def _quiet_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: each tokenizes on its own


@dataclass(frozen=True)
class PreparedManifest:
    """What prepare records beside its tables (`prepare/manifest.json`): the input hashes, a pairs dataset's
    reading summary, the prompts really used and the tokenizer's fingerprint. Every later stage reads the
    prompts from here only."""

    inputs: dict
    pairs: dict | None
    query_prompt: str | None
    doc_prompt: str | None
    embedding_seq_len: int
    tokenizer_sha256: str | None = None  # models.tokenizer_sha256 of the model the tokens are from

    def write(self, path: str) -> None:
        record = asdict(self)
        if record["pairs"] is None:
            del record["pairs"]
        write_json(path, record, ensure_ascii=False)


def read_manifest(path: str) -> PreparedManifest:
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    return PreparedManifest(**{"pairs": None, **record})


def same_extras(seen: dict | None, new: dict) -> dict:
    """Batch-level extras are saved once for all rows, so every batch must return the same ones."""
    if seen is not None and new != seen:
        raise ValueError(f"model preprocessing returned batch extras that differ: {new} vs {seen}")
    return new


def save_tokenized(
    batches: Iterator[pa.RecordBatch],
    n_rows: int,
    inputs_of,
    encode,
    out_dir: Path,
    scratch: Path,
    desc: str,
    workers: int = 1,
) -> None:
    """Tokenize the rows of `batches` (`inputs_of(batch)`: the model inputs of a record batch;
    `encode(inputs) -> (token columns, extras)`) and save them with the batch's own columns as a dataset
    folder, with the batch-level extras (identical for every batch) beside it for the model stage.

    With `workers` > 1, blocks of TOKENIZE_ROWS rows are tokenized in as many forked processes, at most two
    blocks each ahead of the writer, and written in order: the folder is byte-identical to one process's."""
    global _encode
    _encode = encode
    pool = None
    if workers > 1:
        context = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_quiet_worker)
    pending: deque = deque()
    extras = None
    writer = None
    try:
        with (
            pa.OSFile(str(scratch), "wb") as sink,
            ProgressBar(total=n_rows, desc=desc, unit=" rows", mininterval=10) as bar,
        ):

            def write_next():
                nonlocal writer, extras
                block, result = pending.popleft()
                tokens, block_extras = result.result() if pool else result
                extras = same_extras(extras, block_extras)
                columns = {name: block.column(name) for name in block.schema.names} | tokens
                table = pa.table(columns)
                if writer is None:
                    writer = pa.ipc.new_stream(sink, table.schema)
                writer.write_table(table)
                bar.update(table.num_rows)

            for batch in batches:
                for start in range(0, batch.num_rows, TOKENIZE_ROWS):
                    block = batch.slice(start, TOKENIZE_ROWS)
                    inputs = inputs_of(block)
                    pending.append((block, pool.submit(_encode_rows, inputs) if pool else _encode_rows(inputs)))
                    while len(pending) > (2 * workers if pool else 0):
                        write_next()
            while pending:
                write_next()
            if writer is not None:
                writer.close()
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        _encode = None
    import datasets

    table = datasets.table.MemoryMappedTable.from_file(str(scratch))
    datasets.Dataset(table, fingerprint=f"negflow-{desc}").save_to_disk(str(out_dir))  # no path in state.json
    scratch.unlink(missing_ok=True)
    (out_dir / EXTRAS_FILE).write_text(json.dumps(extras or {}), encoding="utf-8")


def load_table(dataset_dir: str | Path, columns: list[str]) -> pa.Table:
    """Columns of a prepared dataset (`datasets`' save_to_disk folder: Arrow stream files listed in
    state.json) as a memory-mapped Arrow table, read with pyarrow alone: the light stages skip importing
    `datasets`, which costs them a second each."""
    state = json.loads(Path(dataset_dir, "state.json").read_text(encoding="utf-8"))
    files = [Path(dataset_dir, data_file["filename"]) for data_file in state["_data_files"]]
    return pa.concat_tables(pa.ipc.open_stream(pa.memory_map(str(f))).read_all().select(columns) for f in files)


TOKEN_COLUMNS = ("input_ids", "token_type_ids", "length")  # what the model stages read of a tokenized dataset


def load_tokens(dataset_dir: str | Path) -> pa.Table:
    """The token columns a tokenized dataset has (token types only for models that use them), memory-mapped."""
    state = json.loads(Path(dataset_dir, "dataset_info.json").read_text(encoding="utf-8"))
    return load_table(dataset_dir, [c for c in TOKEN_COLUMNS if c in state["features"]])


def load_extras(dataset_dir: str | Path) -> dict:
    """Batch-level model inputs (e.g. prompt_length) saved beside a tokenized dataset."""
    return json.loads(Path(dataset_dir, EXTRAS_FILE).read_text(encoding="utf-8"))


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
