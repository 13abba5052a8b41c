"""Training files from `negatives.jsonl`: FlagEmbedding fine-tuning JSONL and the four sentence-transformers
formats of `mine_hard_negatives`, as Parquet that `datasets.load_dataset("parquet", ...)` reads.

Multiple positives never multiply rows where the format allows: labeled-list keeps one row per query,
labeled-pair one row per document, triplet pairs each negative with one positive in turn.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negflow.files import atomic_output
from negflow.negatives import read_negatives
from negflow.store import load_table

log = logging.getLogger("negflow")

ST_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")
BATCH_QUERIES = 10_000


@dataclass
class Example:
    query: str
    positives: list[str]
    negatives: list[str]
    positive_scores: list[float]
    negative_scores: list[float]


def iter_examples(negatives_path: str, corpus_dir: str, queries_dir: str) -> Iterator[list[Example]]:
    """Batches of examples with texts looked up by id in the prepared corpus and queries (vectorised)."""
    corpus = load_table(corpus_dir, ["id", "text"])
    queries = load_table(queries_dir, ["id", "text"])
    records = read_negatives(negatives_path)
    while True:
        batch = [r for _, r in zip(range(BATCH_QUERIES), records, strict=False)]
        if not batch:
            return
        doc_ids = pa.array([d for r in batch for d in r.docs], pa.string())
        doc_texts = corpus["text"].take(pc.index_in(doc_ids, value_set=corpus["id"])).to_pylist()
        query_ids = pa.array([r.query for r in batch], pa.string())
        query_texts = queries["text"].take(pc.index_in(query_ids, value_set=queries["id"])).to_pylist()
        examples, start = [], 0
        for record, query_text in zip(batch, query_texts, strict=True):
            n_docs, n_pos = len(record.docs), record.n_positives
            texts = doc_texts[start : start + n_docs]
            start += n_docs
            scores = record.model_scores()
            examples.append(Example(query_text, texts[:n_pos], texts[n_pos:], scores[:n_pos], scores[n_pos:]))
        yield examples


def write_flag(examples: Iterator[list[Example]], prompt: str, layout: str, out_path: str) -> dict[str, int]:
    """FlagEmbedding fine-tuning JSONL: one line per query, or per query-positive pair."""
    rows = 0
    with atomic_output(out_path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for batch in examples:
            for ex in batch:
                pairs = [(ex.positives, ex.positive_scores)]
                if layout == "pair":
                    pairs = [([p], [s]) for p, s in zip(ex.positives, ex.positive_scores, strict=True)]
                for pos, pos_scores in pairs:
                    line = {
                        "query": ex.query,
                        "pos": pos,
                        "neg": ex.negatives,
                        "pos_scores": pos_scores,
                        "neg_scores": ex.negative_scores,
                        "prompt": prompt,
                    }
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
                    rows += 1
    return {"rows": rows}


ST_LAYOUTS = ("compact", "per_positive")


def st_rows(
    batch: list[Example], fmt: str, num_negatives: int, scores: bool, layout: str = "compact"
) -> tuple[dict[str, list], int]:
    """Columns of one batch in a sentence-transformers format, and how many queries it had to skip. Layout
    `compact`: several positives do not multiply rows (a triplet pairs each negative with one positive in
    turn; a labeled-list row holds every positive); `per_positive`: mine_hard_negatives' rows, where every
    positive is paired with every negative (triplet) and has a labeled-list row of its own."""
    if layout not in ST_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; one of {ST_LAYOUTS}")
    cols: dict[str, list] = {}
    skipped = 0

    def add(**values):
        for key, value in values.items():
            cols.setdefault(key, []).append(value)

    for ex in batch:
        if not ex.negatives or (fmt == "n-tuple" and len(ex.negatives) < num_negatives):
            skipped += 1  # n-tuple needs every negative column filled, as in mine_hard_negatives
            continue
        if fmt == "triplet" and layout == "per_positive":
            for pos, pos_score in zip(ex.positives, ex.positive_scores, strict=True):
                for neg, neg_score in zip(ex.negatives, ex.negative_scores, strict=True):
                    add(
                        anchor=ex.query,
                        positive=pos,
                        negative=neg,
                        **({"scores": [pos_score, neg_score]} if scores else {}),
                    )
        elif fmt == "triplet":
            for j in range(max(len(ex.positives), len(ex.negatives))):
                i, k = j % len(ex.positives), j % len(ex.negatives)
                extra = {"scores": [ex.positive_scores[i], ex.negative_scores[k]]} if scores else {}
                add(anchor=ex.query, positive=ex.positives[i], negative=ex.negatives[k], **extra)
        elif fmt == "n-tuple":
            for pos, pos_score in zip(ex.positives, ex.positive_scores, strict=True):
                negs = {f"negative_{k + 1}": ex.negatives[k] for k in range(num_negatives)}
                extra = {"scores": [pos_score, *ex.negative_scores[:num_negatives]]} if scores else {}
                add(anchor=ex.query, positive=pos, **negs, **extra)
        elif fmt == "labeled-pair":
            docs = list(zip(ex.positives, ex.positive_scores, strict=True))
            docs += list(zip(ex.negatives, ex.negative_scores, strict=True))
            for k, (text, score) in enumerate(docs):
                label = {"score": score} if scores else {"label": int(k < len(ex.positives))}
                add(anchor=ex.query, positive=text, **label)
        elif fmt == "labeled-list" and layout == "per_positive":
            for pos, pos_score in zip(ex.positives, ex.positive_scores, strict=True):
                labels = (
                    {"scores": [pos_score, *ex.negative_scores]}
                    if scores
                    else {"labels": [1] + [0] * len(ex.negatives)}
                )
                add(anchor=ex.query, positive=[pos, *ex.negatives], **labels)
        elif fmt == "labeled-list":
            labels = (
                {"scores": ex.positive_scores + ex.negative_scores}
                if scores
                else {"labels": [1] * len(ex.positives) + [0] * len(ex.negatives)}
            )
            add(anchor=ex.query, positive=ex.positives + ex.negatives, **labels)
        else:
            raise ValueError(f"unknown sentence-transformers format {fmt!r}; one of {ST_FORMATS}")
    return cols, skipped


def st_schema(fmt: str, num_negatives: int, scores: bool) -> pa.Schema:
    """The columns of a sentence-transformers format, as mine_hard_negatives names them."""
    text, texts = pa.string(), pa.list_(pa.string())
    if fmt == "triplet":
        fields = [("anchor", text), ("positive", text), ("negative", text)]
    elif fmt == "n-tuple":
        fields = [("anchor", text), ("positive", text)] + [(f"negative_{k + 1}", text) for k in range(num_negatives)]
    elif fmt == "labeled-pair":
        fields = [("anchor", text), ("positive", text), ("score", pa.float64()) if scores else ("label", pa.int64())]
    elif fmt == "labeled-list":
        labels = ("scores", pa.list_(pa.float64())) if scores else ("labels", pa.list_(pa.int64()))
        fields = [("anchor", text), ("positive", texts), labels]
    else:
        raise ValueError(f"unknown sentence-transformers format {fmt!r}; one of {ST_FORMATS}")
    if scores and fmt in ("triplet", "n-tuple"):
        fields.append(("scores", pa.list_(pa.float64())))
    return pa.schema(fields)


def write_sentence_transformers(
    examples: Iterator[list[Example]],
    fmt: str,
    num_negatives: int,
    scores: bool,
    out_path: str,
    layout: str = "compact",
) -> dict[str, int]:
    """One format as Parquet. A run whose selection left no query enough negatives for the format writes
    the format's columns with no rows, and says so (selection.json counts what each filter dropped)."""
    schema = st_schema(fmt, num_negatives, scores)
    rows = skipped = 0
    with atomic_output(out_path) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
        for batch in examples:
            cols, batch_skipped = st_rows(batch, fmt, num_negatives, scores, layout)
            skipped += batch_skipped
            if cols:
                table = pa.table(cols, schema=schema)
                writer.write_table(table)
                rows += table.num_rows
    log.info("%s: %d rows, %d queries skipped (too few negatives for the format)", fmt, rows, skipped)
    if not rows:
        log.warning(
            "%s: no query has %s, so the file has no rows; selection.json counts what each filter dropped",
            fmt,
            f"{num_negatives} negatives" if fmt == "n-tuple" else "a negative",
        )
    return {"rows": rows, "queries_skipped": skipped}
