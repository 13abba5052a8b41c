"""Judgments the miner never uses, to measure against: the audit's and finetune's qrels (checked right after
prepare by rule prepare_judgments and stored with their queries' texts) and the positives `audit_holdout`
hides from the miner (`prepare/holdout.parquet`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negflow.beir import ReadStats, iter_queries, read_qrels, unknown_ids_message
from negflow.errors import InputError
from negflow.files import atomic_output, read_parquet
from negflow.store import load_table

log = logging.getLogger("negflow")


def read_judgments(ref: str, known_docs: set[str] | dict, known_queries: Iterable[str] | None = None) -> dict:
    """query id -> {doc id: grade}; unknown ids are a one-line error naming the file."""
    rows = read_qrels(ref)
    unknown = [d for _, d, _ in rows if d not in known_docs]
    if unknown:
        raise InputError(unknown_ids_message("corpus ids", ref, unknown))
    if known_queries is not None:
        known_queries = set(known_queries)
        unknown = [q for q, _, _ in rows if q not in known_queries]
        if unknown:
            raise InputError(unknown_ids_message("query ids", ref, unknown))
    judged: dict[str, dict[str, int]] = {}
    for q, d, grade in rows:
        judged.setdefault(q, {})[d] = grade
    return judged


JUDGMENTS_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("doc_id", pa.string()),
        ("score", pa.int32()),
    ]
)


def prepare_judgments(
    qrels: dict[str, str | None], queries_ref: str, corpus_dir: str, out_path: str, candidates: int
) -> dict[str, int]:
    """Check the audit's and finetune's qrels (`qrels`: kind -> qrels reference, None when not configured)
    against the prepared corpus and the queries, and write them with their queries' texts as one table:
    a bad file stops the run right after prepare, not at the end. Also checks, for every kind of input
    (a pair file's corpus is only known now, and merged duplicates shrink any corpus), that the corpus
    holds more documents than the `candidates` a query asks for. Returns the rows per kind."""
    doc_ids = set(load_table(corpus_dir, ["id"])["id"].to_pylist())
    if len(doc_ids) <= candidates:
        raise InputError(
            f"{corpus_dir}: {candidates} candidates per query asked for, but the prepared corpus holds only "
            f"{len(doc_ids)} distinct documents; lower `candidates`"
        )
    texts = dict(iter_queries(queries_ref, ReadStats())) if any(qrels.values()) else {}
    rows = []
    counts = {}
    for kind, ref in qrels.items():
        judged = read_judgments(ref, doc_ids, texts) if ref else {}
        rows += [(kind, q, texts[q], d, grade) for q, grades in judged.items() for d, grade in grades.items()]
        counts[kind] = sum(map(len, judged.values()))
        if ref:
            log.info("%s judgments: %d rows, %d queries from %s", kind, counts[kind], len(judged), ref)
    columns = zip(*rows, strict=True) if rows else [[]] * len(JUDGMENTS_SCHEMA)
    with atomic_output(out_path) as tmp:
        pq.write_table(pa.table(list(map(list, columns)), schema=JUDGMENTS_SCHEMA), tmp)
    return counts


def load_judgments(path: str, kind: str) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """One kind of prepared judgments: query id -> {doc id: grade}, and the judged queries' texts."""
    rows = read_parquet(path).filter(pc.equal(pc.field("kind"), kind)).to_pylist()
    judged: dict[str, dict[str, int]] = {}
    texts = {}
    for row in rows:
        judged.setdefault(row["query_id"], {})[row["doc_id"]] = row["score"]
        texts[row["query_id"]] = row["query"]
    return judged, texts


def read_holdout(path: str) -> dict[str, dict[str, int]]:
    """The hidden positives: query id -> {doc id: grade}."""
    judged: dict[str, dict[str, int]] = {}
    for row in read_parquet(path).to_pylist():
        judged.setdefault(row["query_id"], {})[row["doc_id"]] = row["score"]
    return judged


def relevant_docs(judged: dict[str, dict[str, int]], min_positive_score: int) -> dict[str, set[str]]:
    """query id -> the documents graded at least min_positive_score, for the queries that have any."""
    relevant = {q: {d for d, g in grades.items() if g >= min_positive_score} for q, grades in judged.items()}
    return {q: docs for q, docs in relevant.items() if docs}
