"""negatives.jsonl, the file every later stage reads: one record per query, written by export_negatives.

A record lists the query's positives first, each with its qrels grade in `doc_scores` (at least 1: the
schema's min_positive_score), then its negatives with 0.0 (given negatives first, then the mined ones).
This module is the one place that writes a record and tells its positives from its negatives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class NegativesRecord:
    query: str
    docs: list[str]
    doc_scores: list[float]  # the positives' grades (>= 1), then 0.0 for each negative
    query_doc_cos: list[float]
    doc_doc_cos: list[float]  # len(docs) x len(docs), row by row
    query_doc_ce: list[float | None] | None = None  # with a cross-encoder; None for a padded negative
    # with candidate sources other than the dense search alone: per document, the sources that returned it
    # ([] for positives, given negatives and padding)
    doc_sources: list[list[str]] | None = None

    @property
    def n_positives(self) -> int:
        return sum(1 for grade in self.doc_scores if grade >= 1)

    def positives(self) -> list[str]:
        return self.docs[: self.n_positives]

    def negatives(self) -> list[str]:
        return self.docs[self.n_positives :]

    def model_scores(self) -> list[float]:
        """Each document's score as the training files carry it: the cross-encoder's where there is one,
        else the cosine."""
        ce = self.query_doc_ce or [None] * len(self.docs)
        return [c if c is not None else cos for c, cos in zip(ce, self.query_doc_cos, strict=True)]

    def to_json(self) -> str:
        fields = {"query": self.query, "docs": self.docs, "doc_scores": self.doc_scores}
        fields["query_doc_cos"] = self.query_doc_cos
        if self.query_doc_ce is not None:
            fields["query_doc_ce"] = self.query_doc_ce
        fields["doc_doc_cos"] = self.doc_doc_cos
        if self.doc_sources is not None:
            fields["doc_sources"] = self.doc_sources
        return json.dumps(fields, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> NegativesRecord:
        return cls(**json.loads(line))


def read_negatives(path: str | Path) -> Iterator[NegativesRecord]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield NegativesRecord.from_json(line)
