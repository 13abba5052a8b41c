"""Stage 3: retrieve the top candidates of every query with FAISS, excluding its qrels documents.

Queries stream through the index in batches and results stream to Parquet, so memory is the index
plus one batch. Embeddings are unit vectors, so inner product is the cosine.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negflow.devices import visible_gpus
from negflow.errors import ConfigError, InputError
from negflow.files import atomic_output, open_parquet
from negflow.progress import ProgressBar
from negflow.shards import in_shard_order, parse_shard, shard_range
from negflow.store import ShardedEmbeddings, load_table

log = logging.getLogger("negflow")

ADD_CHUNK = 65_536
PQ_OVERSAMPLE = 4
IVF_KINDS = ("ivf", "ivfpq")  # built in parts: trained once, filled per embedding shard, merged
GPU_MAX_K = 2048  # faiss GPU indexes cannot return more neighbours than this

CANDIDATES_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("query_row", pa.int32()),
        ("doc_row", pa.int64()),
        ("rank", pa.int32()),
        ("cosine", pa.float32()),
    ]
)


def per_source(settings: dict) -> int:
    """Candidates each source (this search, bm25, a run file) returns per query: `candidates_per_source`,
    else `candidates`."""
    return settings.get("candidates_per_source") or settings["candidates"]


class RankedLists:
    """One block of queries' ranked candidate lists, gathered into a table of `schema` (the dense search's,
    whose score is `cosine`, or another source's, whose score is `score`): ranks count from 1 per query."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.query_ids: list[str] = []
        self.query_rows: list[np.ndarray] = []
        self.doc_rows: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []

    def add(self, query_row: int, query_id: str, doc_rows: np.ndarray, scores: np.ndarray) -> None:
        self.query_ids += [query_id] * len(doc_rows)
        self.query_rows.append(np.full(len(doc_rows), query_row, dtype=np.int32))
        self.doc_rows.append(np.asarray(doc_rows, dtype=np.int64))
        self.scores.append(np.asarray(scores, dtype=np.float32))

    def table(self, doc_ids: pa.Array) -> pa.Table:
        """The lists, with the documents' ids from the corpus id column."""
        doc_rows = np.concatenate(self.doc_rows) if self.doc_rows else np.zeros(0, dtype=np.int64)
        ranks = [np.arange(1, len(rows) + 1, dtype=np.int32) for rows in self.doc_rows]
        empty = np.zeros(0, dtype=np.int32)
        columns = [
            pa.array(self.query_ids, pa.string()),
            doc_ids.take(doc_rows),
            np.concatenate(self.query_rows) if self.query_rows else empty,
            doc_rows,
            np.concatenate(ranks) if ranks else empty,
            np.concatenate(self.scores) if self.scores else np.zeros(0, dtype=np.float32),
        ]
        return pa.table(columns, schema=self.schema)


def empty_index(corpus: ShardedEmbeddings, kind: str, settings: dict):
    """A CPU FAISS inner-product index, trained where the kind needs it, with no vectors yet."""
    import faiss

    dim, n = corpus.dim, len(corpus)
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings["hnsw_ef_construction"]
        return index
    if kind not in IVF_KINDS:
        raise ValueError(f"unknown index kind {kind!r}")
    nlist = min(settings["ivf_nlist"] or max(1, int(4 * math.sqrt(n))), n)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        train_size = nlist * 64
    else:
        m = settings["ivfpq_m"]
        if dim % m:
            raise ConfigError(f"config: ivfpq_m {m} must divide the embedding dimension {dim}")
        nbits = min(8, int(math.log2(n)))  # a codebook cannot have more centroids than training points
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        train_size = max(nlist * 64, 256 * 2**nbits)
        log.info("ivfpq: %d bytes per vector (%d-bit codes)", m * nbits // 8, nbits)
    # a seeded sample, read from the memory-mapped shards: training never needs the whole corpus in memory
    sample = np.sort(np.random.default_rng(settings["seed"]).choice(n, size=min(n, train_size), replace=False))
    log.info("training %s with %d cells on %d of %d vectors", kind, nlist, len(sample), n)
    index.train(corpus.take(sample))
    return index


def build_index(corpus: ShardedEmbeddings, kind: str, settings: dict):
    """A complete index over the corpus, added chunk by chunk from the memory-mapped shards."""
    index = empty_index(corpus, kind, settings)
    for chunk in corpus.chunks(ADD_CHUNK):
        index.add(chunk)
    return index


def _write(index, out_path: str) -> None:
    import faiss

    with atomic_output(out_path) as tmp:
        faiss.write_index(index, str(tmp))
    log.info("wrote %s (%d vectors)", out_path, index.ntotal)


def write_index(corpus_shards: list[str], settings: dict, out_path: str) -> None:
    """Build an approximate index in one job (HNSW's graph cannot be built in parts)."""
    corpus = ShardedEmbeddings(corpus_shards)
    log.info("building a %s index over %d documents (dim %d)", settings["index"], len(corpus), corpus.dim)
    _write(build_index(corpus, settings["index"], settings), out_path)


def train_index(corpus_shards: list[str], settings: dict, out_path: str) -> None:
    """An IVF index's trained, empty shell: the one quantizer every part is added to."""
    _write(empty_index(ShardedEmbeddings(corpus_shards), settings["index"], settings), out_path)


def add_shard_to_index(trained_path: str, corpus_shards: list[str], shard: str, out_path: str) -> None:
    """Add one embedding shard to a copy of the trained index, under its global corpus rows, so parts
    built by separate jobs merge into the index one job would have built."""
    import faiss

    corpus = ShardedEmbeddings(corpus_shards)
    index = faiss.read_index(trained_path)
    i = parse_shard(shard)[0]
    part, offset = corpus.parts[i], int(corpus.offsets[i])
    for start in range(0, len(part), ADD_CHUNK):
        chunk = np.ascontiguousarray(part[start : start + ADD_CHUNK])
        index.add_with_ids(chunk, np.arange(offset + start, offset + start + len(chunk), dtype=np.int64))
    log.info("added corpus rows %d-%d (shard %s)", offset, offset + len(part), shard)
    _write(index, out_path)


def merge_index_parts(part_paths: list[str], out_path: str) -> None:
    """One index from the parts, their inverted lists moved in shard order."""
    import faiss

    part_paths = in_shard_order(part_paths)
    index = faiss.read_index(part_paths[0])
    for path in part_paths[1:]:
        index.merge_from(faiss.read_index(path), 0)
    _write(index, out_path)


def load_index(corpus: ShardedEmbeddings, settings: dict, index_path: str, use_gpu: bool):
    """The prebuilt approximate index, read from disk; on the GPU when asked (faiss has no GPU HNSW). A flat
    search needs none: it streams the shards through `exact_top_k`."""
    import faiss

    # memory-mapped where the index type allows (IVF lists): jobs on one node share the page cache
    index = faiss.read_index(index_path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    if index.ntotal != len(corpus):
        raise ValueError(f"{index_path} holds {index.ntotal} vectors, the corpus {len(corpus)}; rerun build_index")
    kind = settings["index"]
    if kind in IVF_KINDS:
        index.nprobe = min(settings["ivf_nprobe"], index.nlist)
    if use_gpu and kind != "hnsw":
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
        index.referenced_resources = resources  # keep alive as long as the index
    return index


def torch_has_gpu() -> bool:
    """Asked only where a GPU is visible: importing torch costs the search job a second and a half."""
    import torch

    return torch.cuda.is_available()


def faiss_has_gpu(device_setting: str) -> bool:
    import faiss

    if device_setting == "cpu" or not hasattr(faiss, "get_num_gpus"):
        return False
    return faiss.get_num_gpus() > 0


def exclusions_by_query(qrels_query_rows: np.ndarray, qrels_doc_rows: np.ndarray) -> dict[int, set[int]]:
    excluded: dict[int, set[int]] = defaultdict(set)
    for q, d in zip(qrels_query_rows.tolist(), qrels_doc_rows.tolist(), strict=True):
        excluded[q].add(d)
    return excluded


def exact_cosines(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Row-wise inner products accumulated in float64: the same value for a pair whatever batch, index or
    shard count produced it, so ranks and scores do not depend on how the search was split."""
    return np.einsum("ij,ij->i", queries.astype(np.float64), docs.astype(np.float64)).astype(np.float32)


SCORE_BLOCK = 2**25  # floats in one (queries x corpus chunk) score block: 128 MB


def exact_top_k(queries: np.ndarray, corpus_chunks, k: int, device: str = "cpu", dtype=None) -> np.ndarray:
    """Row indices of the k best documents per query by inner product, best first, merged over corpus
    chunks into a running top-k, so memory is queries x (chunk + k) whatever the corpus size. On the CPU
    FAISS's blocked exact kernel and result heap; on a GPU torch matmul + top-k (chunks may be tensors
    already on the device, `dtype` e.g. torch.bfloat16 sets the matmul precision). Ties: no set order."""
    if device == "cpu" and dtype is None:
        return _faiss_top_k(queries, corpus_chunks, k)
    return _torch_top_k(queries, corpus_chunks, k, device, dtype)


def _faiss_top_k(queries: np.ndarray, corpus_chunks, k: int) -> np.ndarray:
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    offset = 0
    for chunk in corpus_chunks:
        scores, rows = faiss.knn(
            queries, np.ascontiguousarray(chunk, dtype=np.float32), min(k, len(chunk)), faiss.METRIC_INNER_PRODUCT
        )
        heap.add_result(scores, rows + offset)
        offset += len(chunk)
    heap.finalize()
    return heap.I[:, : min(k, offset)]


def _torch_top_k(queries: np.ndarray, corpus_chunks, k: int, device: str, dtype) -> np.ndarray:
    import torch

    device = torch.device(device)
    dtype = dtype or torch.float32
    q = torch.as_tensor(queries).to(device, dtype)
    best_scores = torch.empty((len(q), 0), device=device)
    best_rows = torch.empty((len(q), 0), device=device, dtype=torch.int64)
    offset = 0
    for chunk in corpus_chunks:
        c = torch.as_tensor(chunk).to(device, dtype, non_blocking=True)
        scores, rows = torch.topk((q @ c.T).float(), min(k, len(c)), dim=1)
        merged_rows = torch.cat([best_rows, rows + offset], dim=1)
        best_scores, pick = torch.topk(torch.cat([best_scores, scores], dim=1), min(k, merged_rows.shape[1]), dim=1)
        best_rows = torch.gather(merged_rows, 1, pick)
        offset += len(c)
    return best_rows.cpu().numpy()


def top_candidates(
    query: np.ndarray, hits: np.ndarray, excluded: set[int], corpus: ShardedEmbeddings, candidates: int
) -> tuple[np.ndarray, np.ndarray]:
    """The index's hits minus FAISS's -1 padding and the query's qrels documents, reranked by exact
    cosine (ties by corpus row), best `candidates` kept."""
    hits = hits[hits >= 0]
    if excluded:
        hits = hits[~np.isin(hits, list(excluded))]
    cosines = exact_cosines(np.broadcast_to(query, (len(hits), len(query))), corpus.take(hits))
    order = np.lexsort((hits, -cosines))[:candidates]
    return hits[order], cosines[order]


def search_shard(
    corpus_shards: list[str],
    query_shards: list[str],
    corpus_dir: str,
    queries_dir: str,
    qrels_dir: str,
    settings: dict,
    batch_size: int,
    out_path: str,
    shard: str = "1-of-1",
    index_path: str | None = None,
) -> dict[str, int]:
    """Write the top candidates of one contiguous batch of queries (shard `I-of-N`), excluding each
    query's qrels documents, ranked by exact cosine."""
    corpus = ShardedEmbeddings(corpus_shards)
    queries = ShardedEmbeddings(query_shards)
    doc_ids = load_table(corpus_dir, ["id"])["id"]  # memory-mapped Arrow: a corpus-sized Python list would not fit
    query_ids = load_table(queries_dir, ["id"])["id"].to_pylist()
    if len(doc_ids) != len(corpus) or len(query_ids) != len(queries):
        raise ValueError("embedding shards do not match the prepared corpus/queries; rerun embed")
    qrels_query_rows, qrels_doc_rows, _ = qrels_rows(qrels_dir, query_ids)
    excluded = exclusions_by_query(qrels_query_rows, qrels_doc_rows)
    max_excluded = max((len(v) for v in excluded.values()), default=0)
    part = shard_range(len(queries), *parse_shard(shard))

    candidates = per_source(settings)
    if len(corpus) <= candidates:  # local corpora are refused before any job; a hub corpus is sized here
        raise InputError(
            f"{corpus_dir}: {candidates} candidates per query asked for, but the corpus holds only {len(corpus)} "
            "documents; lower `candidates`"
        )
    flat = settings["index"] == "flat"
    k = min(candidates + max_excluded, len(corpus))
    if settings["index"] == "ivfpq":  # compressed scores are rough: fetch more, keep the best by exact cosine
        k = min(k * PQ_OVERSAMPLE, len(corpus))
    if flat:  # exact, streamed over the memory-mapped shards (torch on a GPU): no in-memory copy of the corpus
        use_gpu = settings["device"] != "cpu" and bool(visible_gpus()) and torch_has_gpu()
    else:
        use_gpu = faiss_has_gpu(settings["device"])
        if use_gpu and k > GPU_MAX_K:
            log.warning("k=%d exceeds the faiss GPU limit of %d; searching on the CPU", k, GPU_MAX_K)
            use_gpu = False
    log.info(
        "index %s over %d documents (dim %d, %s); queries %d-%d of %d (shard %s), k=%d "
        "(candidates %d + up to %d qrels documents)",
        settings["index"],
        len(corpus),
        corpus.dim,
        "GPU" if use_gpu else "CPU",
        part.start,
        part.stop,
        len(queries),
        shard,
        k,
        candidates,
        max_excluded,
    )
    if flat:
        chunk_rows = max(1024, SCORE_BLOCK // max(1, min(batch_size, len(part))))
    else:
        index = load_index(corpus, settings, index_path, use_gpu)
        if settings["index"] == "hnsw":
            index.hnsw.efSearch = max(settings["hnsw_ef_search"], k)

    short = 0
    total = 0
    with (
        atomic_output(out_path) as tmp,
        pq.ParquetWriter(str(tmp), CANDIDATES_SCHEMA) as writer,
        ProgressBar(total=len(part), desc="search", unit=" queries", mininterval=5) as bar,
    ):
        for start in range(part.start, part.stop, batch_size):
            block_rows = np.arange(start, min(start + batch_size, part.stop))
            block = np.ascontiguousarray(queries.take(block_rows))
            if flat:
                rows = exact_top_k(block, corpus.chunks(chunk_rows), k, "cuda" if use_gpu else "cpu")
            else:
                _, rows = index.search(block, k)
            lists = RankedLists(CANDIDATES_SCHEMA)
            for offset, q in enumerate(block_rows.tolist()):
                kept_rows, kept_scores = top_candidates(
                    block[offset], rows[offset], excluded.get(q, set()), corpus, candidates
                )
                short += len(kept_rows) < candidates
                total += len(kept_rows)
                lists.add(q, query_ids[q], kept_rows, kept_scores)
            writer.write_table(lists.table(doc_ids))
            corpus.release()  # the rerank's random reads mapped pages of the corpus; they stay in the page cache
            bar.update(len(block_rows))
    log.info("%d candidates for %d queries; %d queries got fewer than %d", total, len(part), short, candidates)
    return {"queries": len(part), "candidates": total, "short": short}


def qrels_rows(qrels_dir: str, query_ids: list[str]) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """Query rows and corpus rows of every prepared qrels line, and the qrels table itself."""
    qrels = load_table(qrels_dir, ["query_id", "doc_id", "doc_row", "score", "positive"])
    query_row_of = {q: i for i, q in enumerate(query_ids)}
    query_rows = np.array([query_row_of[q] for q in qrels["query_id"].to_pylist()], dtype=np.int64)
    return query_rows, qrels["doc_row"].to_numpy().astype(np.int64), qrels


def merge_candidates(shard_paths: list[str], out_path: str) -> dict[str, int]:
    """Concatenate the search shards (the dense search's or bm25's), in query order, into every query's
    candidates."""
    shard_paths = in_shard_order(shard_paths)
    total = 0
    schema = open_parquet(shard_paths[0]).schema_arrow
    with atomic_output(out_path) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
        for path in shard_paths:
            for batch in open_parquet(path).iter_batches():
                writer.write_batch(batch)
                total += batch.num_rows
    log.info("merged %d search shards: %d candidates", len(shard_paths), total)
    return {"shards": len(shard_paths), "candidates": total}


def compute_qrels_cosines(
    corpus_shards: list[str], query_shards: list[str], queries_dir: str, qrels_dir: str, out_path: str
) -> int:
    """The exact cosine of every qrels (query, document) pair: the positives' scores that selection compares
    the candidates against."""
    corpus = ShardedEmbeddings(corpus_shards)
    queries = ShardedEmbeddings(query_shards)
    query_ids = load_table(queries_dir, ["id"])["id"].to_pylist()
    query_rows, doc_rows, qrels = qrels_rows(qrels_dir, query_ids)
    with atomic_output(out_path) as tmp:
        table = pa.table(
            {
                "query_id": qrels["query_id"],
                "doc_id": qrels["doc_id"],
                "query_row": pa.array(query_rows, pa.int32()),
                "doc_row": pa.array(doc_rows, pa.int64()),
                "score": qrels["score"].cast(pa.int32()),
                "positive": qrels["positive"],
                "cosine": pa.array(exact_cosines(queries.take(query_rows), corpus.take(doc_rows)), pa.float32()),
            }
        )
        pq.write_table(table, str(tmp))
    log.info("cosines of %d qrels pairs of %d queries", len(qrels), len(query_ids))
    return len(qrels)
