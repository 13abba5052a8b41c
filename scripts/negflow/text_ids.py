"""Stable ids of texts: the form two texts must share to be one (`normalise`) and the 128-bit content hash that
names them (XXH3-128, `text_hash`; `TextIndex.hex_ids` writes the same digits for a whole column). XXH3's
output is fixed by its specification, so an id is the same on every machine and run (never Python's hash()).

`TextIndex` numbers the distinct texts of a large input in first-seen order while holding only numpy arrays
(the keys and a sorted lookup), never a Python object per text.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pyarrow as pa
import xxhash

from negflow.errors import InputError

# Four hex digits of every 16-bit value, as the little-endian uint32 whose bytes read in order.
HEX_QUADS = np.frombuffer("".join(f"{i:04x}" for i in range(1 << 16)).encode(), dtype="<u4")


def normalise(text: str) -> str:
    """The form two texts must share to be one query or document: Unicode NFC, surrounding space trimmed
    (ASCII is already NFC, which spares the call on most texts)."""
    return (text if text.isascii() else unicodedata.normalize("NFC", text)).strip()


def normalise_all(texts: list[str]) -> list[str]:
    """`normalise` over a column; a column that is all ASCII (one check over the joined texts, most columns)
    is only trimmed, without a Python call per text."""
    if "".join(texts).isascii():
        return list(map(str.strip, texts))
    return list(map(normalise, texts))


def text_hash(text: str) -> str:
    """The stable id of a normalised text: XXH3-128 of its UTF-8 bytes as 32 hex digits. XXH3's output is
    fixed by its specification, so the id is the same on every machine and run (never Python's hash())."""
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


class KeyRuns:
    """64-bit key prefixes with their text numbers, as sorted runs of doubling size (a log-structured merge):
    a lookup searches each run, and adding merges runs of equal size, so each key is copied O(log n) times in
    all rather than once per chunk."""

    def __init__(self):
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (prefixes sorted, numbers)

    def find(self, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For sorted unique `hi`: whether each is known, and its number where it is."""
        found = np.zeros(len(hi), dtype=bool)
        index = np.zeros(len(hi), dtype=np.int64)
        for run_hi, run_index in self.runs:
            pos = np.minimum(np.searchsorted(run_hi, hi), len(run_hi) - 1)
            hit = run_hi[pos] == hi
            found |= hit
            index[hit] = run_index[pos[hit]]
        return found, index

    def add(self, hi: np.ndarray, index: np.ndarray) -> None:
        """Add sorted prefixes that `find` did not know."""
        self.runs.append((hi, index))
        while len(self.runs) > 1 and len(self.runs[-1][0]) >= len(self.runs[-2][0]):
            newer, older = self.runs.pop(), self.runs.pop()
            merged_hi = np.concatenate([older[0], newer[0]])
            order = np.argsort(merged_hi, kind="stable")  # two sorted runs: a linear merge
            self.runs.append((merged_hi[order], np.concatenate([older[1], newer[1]])[order]))


class TextIndex:
    """Distinct normalised texts, numbered in first-seen order by their 128-bit keys (XXH3-128 of the UTF-8
    bytes). Memory holds each text's key (by number) and the sorted 64-bit prefixes with their numbers; two
    texts that share a prefix but not the rest are an error, never a silent merge."""

    def __init__(self):
        self._lookup = KeyRuns()
        self._keys = np.empty((1024, 2), dtype=np.uint64)  # in number order; grows by doubling
        self.size = 0

    def add(self, texts: list[str]) -> np.ndarray:
        """The number of each normalised text, numbering unseen ones as they appear. Each text's UTF-8 bytes
        and digest live only while it is hashed: a list of them per chunk would be allocated and freed in
        bulk, and every chunk would fault in fresh memory for it."""
        digests = np.fromiter(map(xxhash.xxh3_128_digest, map(str.encode, texts)), dtype="S16", count=len(texts))
        keys = digests.view(">u8").reshape(-1, 2).astype(np.uint64)
        hi, lo = keys[:, 0], keys[:, 1]
        unique_hi, first, inverse = np.unique(hi, return_index=True, return_inverse=True)
        found, index = self._lookup.find(unique_hi)
        known_lo = self._keys[index[found], 1]
        if np.any(lo[first][inverse] != lo) or np.any(known_lo != lo[first[found]]):
            raise InputError("two different texts share a 64-bit key prefix; please report this")
        new = np.flatnonzero(~found)  # sorted by key
        by_appearance = new[np.argsort(first[new], kind="stable")]
        index[by_appearance] = self.size + np.arange(len(new))
        if len(new):
            if self.size + len(new) > len(self._keys):
                grown = np.empty((2 * (self.size + len(new)), 2), dtype=np.uint64)
                grown[: self.size] = self._keys[: self.size]
                self._keys = grown
            self._keys[self.size : self.size + len(new)] = keys[first[by_appearance]]
            self.size += len(new)
            self._lookup.add(unique_hi[new], index[new])
        return index[inverse]

    def close(self) -> None:
        self._lookup = None  # every text is numbered: free the lookup

    def hex_ids(self, rows: np.ndarray) -> pa.Array:
        """The content hash of texts `rows` as 32 hex digits, built from the keys without a Python string each."""
        chars = HEX_QUADS[self._keys[rows].astype(">u8").view(">u2")]  # (rows, 8) quads of hex digits
        offsets = np.arange(0, 32 * len(rows) + 1, 32, dtype=np.int32)
        return pa.StringArray.from_buffers(len(rows), pa.py_buffer(offsets), pa.py_buffer(chars))
