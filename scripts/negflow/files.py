"""Atomic outputs, so a killed or failed job never leaves a file that looks complete, and Parquet reading."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds. Temporaries left
    by a killed earlier attempt at the same output are removed first (Snakemake runs one job per output)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        _remove(stale)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if final.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        _remove(tmp)


def copy_files(pairs: list[tuple[str, str]]) -> None:
    """Copy each (source, target), each target written under a temporary name, then renamed."""
    for source, target in pairs:
        with atomic_output(target) as tmp:
            shutil.copyfile(source, tmp)


def write_json(path: str | os.PathLike, obj, ensure_ascii: bool = True) -> None:
    """`obj` as indented JSON with a final newline, written atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=ensure_ascii) + "\n", encoding="utf-8")


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None):
    """One Parquet file as an Arrow table. `pq.read_table` goes through `pyarrow.dataset`, which imports
    pandas: 0.2-0.4 s of a light stage's second or so, for a single file that needs none of it."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read(columns=columns)


def open_parquet(path: str | os.PathLike):
    """A Parquet file to stream: without pre-buffering, whose buffers `iter_batches` otherwise keeps for
    every row group it has read, so memory grows with the file (measured: 30M rows, +400 MB)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, pre_buffer=False)


class SortedRows:
    """A Parquet table sorted by an integer key, read once, front to back, in ranges of ascending keys: the
    rows of a block of queries without holding the rest of the file."""

    def __init__(self, path: str, key: str, columns: list[str], batch_rows: int = 262_144):
        self.key = key
        parquet = open_parquet(path)
        self._empty = parquet.schema_arrow.empty_table().select(columns)
        self._batches = parquet.iter_batches(batch_size=batch_rows, columns=columns)
        self._held: list = []
        self._last = -1  # the largest key read so far
        self._done = False

    @property
    def exhausted(self) -> bool:
        """Whether every row has been handed out."""
        return self._done and not self._held

    def below(self, stop: int):
        """The rows not yet handed out whose key is below `stop`, as an Arrow table."""
        import numpy as np
        import pyarrow as pa

        while not self._done and self._last < stop:
            batch = next(self._batches, None)
            if batch is None:
                self._done = True
                break
            keys = batch.column(self.key).to_numpy()
            if len(keys) and (keys[0] < self._last or np.any(keys[1:] < keys[:-1])):
                raise ValueError(f"rows are not sorted by {self.key}; rerun the stage that wrote them")
            self._last = int(keys[-1]) if len(keys) else self._last
            self._held.append(batch)
        if not self._held:
            return self._empty
        held = pa.Table.from_batches(self._held)
        cut = int(np.searchsorted(held.column(self.key).to_numpy(), stop))
        self._held = [b for b in held.slice(cut).to_batches() if b.num_rows]  # an empty slice pins a batch
        return held.slice(0, cut)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
