"""Shards: Snakemake's scatter items `I-of-N` name them; each is a contiguous slice of rows."""

from __future__ import annotations

import re

SHARD_PATTERN = r"\d+-of-\d+"  # a scatter item, as the rules constrain the `scatteritem` wildcard


def parse_shard(shard: str) -> tuple[int, int]:
    """Snakemake's scatter item, 1-based, to a 0-based shard index and the count: '2-of-8' -> (1, 8)."""
    match = re.fullmatch(r"(\d+)-of-(\d+)", shard)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"shard must look like 'I-of-N' with 1 <= I <= N, got {shard!r}")
    return int(match[1]) - 1, int(match[2])


def in_shard_order(paths: list[str]) -> list[str]:
    """Shard files (named by their scatter item, `.../I-of-N.ext`) sorted by shard number, not by name."""
    return sorted(paths, key=lambda path: parse_shard(re.search(rf"({SHARD_PATTERN})\.\w+$", path)[1])[0])


def shard_range(n_rows: int, index: int, count: int) -> range:
    """Contiguous rows of shard `index` of `count`; shards differ in size by at most one row."""
    start = n_rows * index // count
    stop = n_rows * (index + 1) // count
    return range(start, stop)
