"""The `bm25` candidate source: lexical retrieval with bm25s over the prepared corpus' texts (title and
text, as the embedding model reads them). The index is built once per dataset (rule index_bm25) and
searched in query shards (rule search_bm25) through a memory map, so a search job holds the queries of
its shard, not the index."""

from __future__ import annotations

import copy
import itertools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
SCAN_SHARE = 16  # a query whose postings hold 1/16 of the corpus or more finds its documents by a scan


def tokenizer(settings: dict):
    """bm25s's tokenizer with the run's stemmer (a Snowball language, or none) and stopwords (a language
    bm25s lists, or none): lower-cased words of two or more characters."""
    import bm25s

    stemmer = None
    if settings["bm25_stemmer"]:
        import Stemmer

        stemmer = Stemmer.Stemmer(settings["bm25_stemmer"])
    return bm25s.tokenization.Tokenizer(stopwords=settings["bm25_stopwords"] or None, stemmer=stemmer)


def _term_counts(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One batch of tokenized documents as arrays: each document's length in tokens, its number of distinct
    terms, and those terms (ascending within the document) with their counts."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    docs = np.repeat(np.arange(len(ids), dtype=np.int64), lengths)
    keys, tf = np.unique((docs << 32) | flat, return_counts=True)
    distinct = np.bincount(keys >> 32, minlength=len(ids))
    return (
        lengths.astype(np.int32),
        distinct.astype(np.int32),
        (keys & 0xFFFFFFFF).astype(np.int32),
        tf.astype(np.int32),
    )


def index_bm25(corpus_dir: str, settings: dict, out_dir: str) -> dict[str, int]:
    """bm25s's index (term-document scores in CSC arrays, which the search jobs memory-map) and the
    tokenizer's vocabulary, the same files bm25s's own `index` and `save` write, built without holding the
    corpus' tokens: a first pass tokenizes batch by batch and spills each batch's distinct terms and counts
    to disk (document frequencies and lengths are all it keeps); a second scores each batch (BM25 as bm25s's
    `lucene` method computes it, float64 then float32) and writes it into the memory-mapped CSC arrays at
    its terms' places. Peak memory is one batch and the vocabulary, not the corpus (bm25s's `index` holds
    every document's token ids as Python lists: about 2 GB at 1M passages)."""
    import bm25s

    texts = load_table(corpus_dir, ["text"])
    words = tokenizer(settings)
    retriever = bm25s.BM25(k1=settings["bm25_k1"], b=settings["bm25_b"])
    assert retriever.method == retriever.idf_method == "lucene", "the scores below are bm25s's lucene method"
    n_docs, k1, b = texts.num_rows, retriever.k1, retriever.b
    with atomic_output(out_dir) as tmp:
        spill = Path(tmp) / "spill"
        spill.mkdir(parents=True)
        batches, total_length = [], 0
        doc_freq = np.zeros(0, dtype=np.int64)
        with ProgressBar(total=n_docs, desc="tokenize", unit=" docs", mininterval=5) as bar:
            for i, batch in enumerate(texts.to_batches(max_chunksize=TOKENIZE_ROWS)):
                ids = words.tokenize(batch.column(0).to_pylist(), update_vocab=True, show_progress=False)
                lengths, distinct, terms, tf = _term_counts(ids)
                doc_freq = np.pad(doc_freq, (0, max(0, int(terms.max(initial=-1)) + 1 - len(doc_freq))))
                doc_freq += np.bincount(terms, minlength=len(doc_freq))
                total_length += int(lengths.sum())
                batches.append(spill / f"{i}.npz")
                np.savez(batches[-1], lengths=lengths, distinct=distinct, terms=terms, tf=tf)
                bar.update(batch.num_rows)
        vocab = words.get_vocab_dict()  # bm25s's `index` adds the empty token to it, as here
        n_vocab = len(vocab)
        doc_freq = np.pad(doc_freq, (0, n_vocab - len(doc_freq)))
        found, which = np.unique(doc_freq, return_inverse=True)  # math.log per frequency, as bm25s computes it
        by_freq = [math.log(1 + (n_docs - df + 0.5) / (df + 0.5)) if df else 0.0 for df in found.tolist()]
        idf = np.array(by_freq, dtype=np.float64)[which].astype(np.float32)
        avg_length = np.float64(total_length) / n_docs if n_docs else np.float64(0)
        indptr = np.zeros(n_vocab + 1, dtype=np.int64)
        np.cumsum(doc_freq, out=indptr[1:])
        nnz = int(indptr[-1])
        data = np.lib.format.open_memmap(Path(tmp) / "data.csc.index.npy", "w+", np.float32, (nnz,))
        indices = np.lib.format.open_memmap(Path(tmp) / "indices.csc.index.npy", "w+", np.int32, (nnz,))
        heads, first_doc = indptr[:-1].copy(), 0
        with ProgressBar(total=n_docs, desc="score", unit=" docs", mininterval=5) as bar:
            for path in batches:
                with np.load(path) as part:
                    lengths, distinct, terms, tf = (part[k] for k in ("lengths", "distinct", "terms", "tf"))
                docs = np.repeat(np.arange(first_doc, first_doc + len(lengths), dtype=np.int32), distinct)
                tfc = tf / (k1 * ((1 - b) + b * np.repeat(lengths, distinct) / avg_length) + tf)
                scores = (idf[terms] * tfc).astype(np.float32)
                order = np.argsort(terms, kind="stable")  # by term; documents stay ascending within one
                counts = np.bincount(terms, minlength=n_vocab)
                starts = np.cumsum(counts) - counts
                places = heads[terms[order]] + np.arange(len(order)) - starts[terms[order]]
                data[places], indices[places] = scores[order], docs[order]
                heads += counts
                first_doc += len(lengths)
                path.unlink()
                bar.update(len(lengths))
        data.flush(), indices.flush()
        del data, indices
        spill.rmdir()
        np.save(Path(tmp) / "indptr.csc.index.npy", indptr)
        if "" not in vocab:
            vocab[""] = max(vocab.values(), default=-1) + 1
        retriever.vocab_dict, retriever.nonoccurrence_array = vocab, None  # lucene has none
        unused = {f"{name}_name": f".unused-{name}.npy" for name in ("data", "indices", "indptr")}
        retriever.scores = {"num_docs": n_docs, "data": np.zeros(0), "indices": np.zeros(0), "indptr": np.zeros(0)}
        retriever.save(str(tmp), **unused)  # bm25s's own vocabulary and parameters files
        for name in unused.values():
            (Path(tmp) / name).unlink()
        words.save_vocab(str(tmp))
    log.info("bm25 index of %d documents, %d terms, %d term-document scores", n_docs, n_vocab, nnz)
    return {"docs": n_docs, "terms": n_vocab}


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


class _Postings:
    """The memory-mapped index searched query by query: each query term's posting list added into a reused
    score array (per document the float32 sum in query-term order, as bm25s adds them), and only the
    documents it touched ranked, so a query costs its postings, not the corpus (bm25s's own retrieve zeroes
    and ranks every document for each query)."""

    def __init__(self, index_dir: str):
        import bm25s

        scores = bm25s.BM25.load(index_dir, mmap=True, load_vocab=True).scores
        self.data, self.indices, self.indptr = scores["data"], scores["indices"], scores["indptr"]
        self.n_docs = scores["num_docs"]
        self.scores = np.zeros(self.n_docs, dtype=np.float32)

    def another(self) -> _Postings:
        """The same index with a score array of its own, for another thread."""
        other = copy.copy(self)
        other.scores = np.zeros(self.n_docs, dtype=np.float32)
        return other

    def best(self, terms: list[int], excluded: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best documents by BM25 of a query's term ids (repeats count, as in bm25s), highest first,
        ties by corpus row; documents sharing no term with the query and the `excluded` rows are none."""
        lists = [slice(int(self.indptr[t]), int(self.indptr[t + 1])) for t in terms]
        for part in lists:
            np.add.at(self.scores, self.indices[part], self.data[part])
        if sum(p.stop - p.start for p in lists) * SCAN_SHARE < self.n_docs:  # the documents touched: by postings
            hits = np.unique(np.concatenate([self.indices[p] for p in lists])).astype(np.int64)
            found = self.scores[hits]
            self.scores[hits] = 0
        else:  # or, where they cover the corpus, by a scan
            hits = np.flatnonzero(self.scores)
            found = self.scores[hits]
            self.scores.fill(0)
        keep = found > 0  # a document sharing no term with the query is no candidate
        if len(excluded):
            keep &= ~np.isin(hits, excluded)
        hits, found = hits[keep], found[keep]
        if len(hits) > k:  # every document scoring at least the k-th best, then exact order and ties
            cut = -np.partition(-found, k - 1)[k - 1]
            hits, found = hits[found >= cut], found[found >= cut]
        order = np.lexsort((hits, -found))[:k]
        return hits[order], found[order]


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
    out (as the dense search does), ties by corpus row; each block of queries split over `threads` (numpy
    releases the GIL for the posting-list sums). A query none of whose words is in the index after
    stopwords (or an empty one) gets no BM25 candidates: counted, never an error."""
    index = _Postings(index_dir)
    words = tokenizer(settings)
    words.load_vocab(index_dir)
    doc_ids = load_table(corpus_dir, ["id"])["id"]
    queries = load_table(queries_dir, ["id", "text"])
    excluded = exclusions_by_query(*qrels_rows(qrels_dir, queries["id"].to_pylist())[:2])
    if len(doc_ids) != index.n_docs:
        raise ValueError(
            f"{index_dir} indexes {index.n_docs} documents, the corpus has {len(doc_ids)}; rerun index_bm25"
        )
    part = shard_range(queries.num_rows, *parse_shard(shard))
    scorers = [index] + [index.another() for _ in range(threads - 1)]
    none = np.zeros(0, dtype=np.int64)

    def search(scorer: _Postings, asked: list[tuple[int, list[int]]]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [scorer.best(terms, np.fromiter(excluded.get(q, none), np.int64), candidates) for q, terms in asked]

    no_terms = total = 0
    with (
        atomic_output(out_path) as tmp,
        pq.ParquetWriter(str(tmp), SOURCE_SCHEMA) as writer,
        ProgressBar(total=len(part), desc="bm25", unit=" queries", mininterval=5) as bar,
        ThreadPoolExecutor(len(scorers)) as pool,
    ):
        for start in range(part.start, part.stop, SEARCH_BATCH):
            rows = np.arange(start, min(start + SEARCH_BATCH, part.stop))
            block = queries.slice(int(rows[0]), len(rows))
            tokens = words.tokenize(
                block["text"].to_pylist(), update_vocab=False, show_progress=False, allow_empty=False
            )
            asked = [(i, int(rows[i]), terms) for i, terms in enumerate(tokens) if terms]
            no_terms += len(rows) - len(asked)
            shares = [asked[j :: len(scorers)] for j in range(len(scorers))]
            found = pool.map(search, scorers, [[(q, terms) for _, q, terms in share] for share in shares])
            best = dict(zip([i for share in shares for i, _, _ in share], itertools.chain(*found), strict=True))
            lists = RankedLists(SOURCE_SCHEMA)
            for i, q, _ in asked:
                hits, scores = best[i]
                total += len(hits)
                lists.add(q, block["id"][i].as_py(), hits, scores)
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
