"""The `bm25` candidate source: lexical retrieval with bm25s over the prepared corpus' texts (title and
text, as the embedding model reads them). The index is built once per dataset (rule index_bm25) and
searched in query shards (rule search_bm25) through a memory map, so a search job holds the queries of
its shard, not the index."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negflow.files import atomic_output
from negflow.progress import ProgressBar
from negflow.search import RankedLists, exclusions_by_query, qrels_rows
from negflow.shards import parse_shard, shard_range
from negflow.store import load_table

log = logging.getLogger("negflow")

TOKENIZE_ROWS = 65_536  # corpus rows tokenized at once: the Python strings of one batch, not the corpus
SEARCH_BATCH = 1_024  # queries scored at once


def tokenizer(settings: dict):
    """bm25s's tokenizer with the run's stemmer (a Snowball language, or none) and stopwords (a language
    bm25s lists, or none): lower-cased words of two or more characters."""
    import bm25s

    stemmer = None
    if settings["bm25_stemmer"]:
        import Stemmer

        stemmer = Stemmer.Stemmer(settings["bm25_stemmer"])
    return bm25s.tokenization.Tokenizer(stopwords=settings["bm25_stopwords"] or None, stemmer=stemmer)


def index_bm25(corpus_dir: str, settings: dict, out_dir: str) -> dict[str, int]:
    """Tokenize the corpus batch by batch and write bm25s's index (term-document scores in CSC arrays, which
    the search jobs memory-map) and the tokenizer's vocabulary."""
    import bm25s

    texts = load_table(corpus_dir, ["text"])
    words = tokenizer(settings)
    ids: list[list[int]] = []
    with ProgressBar(total=texts.num_rows, desc="tokenize", unit=" docs", mininterval=5) as bar:
        for batch in texts.to_batches(max_chunksize=TOKENIZE_ROWS):
            ids += words.tokenize(batch.column(0).to_pylist(), update_vocab=True, show_progress=False)
            bar.update(batch.num_rows)
    vocab = words.get_vocab_dict()
    retriever = bm25s.BM25(k1=settings["bm25_k1"], b=settings["bm25_b"])
    retriever.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)
    with atomic_output(out_dir) as tmp:
        retriever.save(str(tmp))
        words.save_vocab(str(tmp))
    log.info("bm25 index of %d documents, %d terms", texts.num_rows, len(vocab))
    return {"docs": texts.num_rows, "terms": len(vocab)}


SOURCE_SCHEMA = pa.schema(  # one candidate source's results (merged over shards: every query's, in query order)
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("query_row", pa.int32()),
        ("doc_row", pa.int64()),
        ("rank", pa.int32()),
        ("score", pa.float32()),
    ]
)


def search_bm25(
    index_dir: str,
    queries_dir: str,
    corpus_dir: str,
    qrels_dir: str,
    settings: dict,
    candidates: int,
    out_path: str,
    shard: str = "1-of-1",
    threads: int = 1,
) -> dict[str, int]:
    """The `candidates` best documents by BM25 of one shard of the queries, the query's qrels documents left
    out (as the dense search does); among the documents bm25s returns, ties by corpus row (which of several
    tied documents at the cut bm25s returns is its own, the same on every run). A query none of whose
    words is in the index after stopwords (or an empty one) gets no BM25 candidates: counted, never an
    error."""
    import bm25s

    retriever = bm25s.BM25.load(index_dir, mmap=True, load_vocab=True)
    words = tokenizer(settings)
    words.load_vocab(index_dir)
    doc_ids = load_table(corpus_dir, ["id"])["id"]
    queries = load_table(queries_dir, ["id", "text"])
    excluded = exclusions_by_query(*qrels_rows(qrels_dir, queries["id"].to_pylist())[:2])
    n_docs = retriever.scores["num_docs"]
    if len(doc_ids) != n_docs:
        raise ValueError(f"{index_dir} indexes {n_docs} documents, the corpus has {len(doc_ids)}; rerun index_bm25")
    part = shard_range(queries.num_rows, *parse_shard(shard))
    max_excluded = max((len(v) for v in excluded.values()), default=0)
    k = min(candidates + max_excluded, n_docs)
    no_terms = total = 0
    with (
        atomic_output(out_path) as tmp,
        pq.ParquetWriter(str(tmp), SOURCE_SCHEMA) as writer,
        ProgressBar(total=len(part), desc="bm25", unit=" queries", mininterval=5) as bar,
    ):
        for start in range(part.start, part.stop, SEARCH_BATCH):
            rows = np.arange(start, min(start + SEARCH_BATCH, part.stop))
            block = queries.slice(int(rows[0]), len(rows))
            tokens = words.tokenize(
                block["text"].to_pylist(), update_vocab=False, show_progress=False, allow_empty=False
            )
            has_terms = [i for i, t in enumerate(tokens) if t]
            no_terms += len(rows) - len(has_terms)
            lists = RankedLists(SOURCE_SCHEMA)
            if has_terms:
                found, scores = retriever.retrieve(
                    [tokens[i] for i in has_terms], k=k, show_progress=False, n_threads=threads if threads > 1 else 0
                )
                for i, hits, hit_scores in zip(has_terms, found, scores, strict=True):
                    q = int(rows[i])
                    keep = hit_scores > 0  # a document sharing no term with the query is no candidate
                    if q in excluded:
                        keep &= ~np.isin(hits, list(excluded[q]))
                    hits, hit_scores = hits[keep].astype(np.int64), hit_scores[keep]
                    order = np.lexsort((hits, -hit_scores))[:candidates]
                    total += len(order)
                    lists.add(q, block["id"][i].as_py(), hits[order], hit_scores[order])
            writer.write_table(lists.table(doc_ids))
            bar.update(len(rows))
    log.info(
        "bm25: %d candidates for %d queries (shard %s); %d queries have no indexed word after stopwords and get "
        "no bm25 candidates",
        total,
        len(part),
        shard,
        no_terms,
    )
    return {"queries": len(part), "candidates": total, "queries_without_terms": no_terms}
