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

from negflow.embed import ShardedEmbeddings
from negflow.files import atomic_output
from negflow.prepare import load_table

log = logging.getLogger("negflow")

ADD_CHUNK = 65_536
GPU_MAX_K = 2048  # faiss GPU indexes cannot return more neighbours than this

MINED_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("query_row", pa.int32()),
        ("doc_row", pa.int64()),
        ("rank", pa.int32()),
        ("cosine", pa.float32()),
    ]
)


def build_index(corpus: ShardedEmbeddings, kind: str, settings: dict, use_gpu: bool):
    """A FAISS inner-product index over the corpus, added chunk by chunk from the memory-mapped shards."""
    import faiss

    dim, n = corpus.dim, len(corpus)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings["hnsw_ef_construction"]
    elif kind == "ivf":
        nlist = settings["ivf_nlist"] or max(1, int(4 * math.sqrt(n)))
        nlist = min(nlist, n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(settings["seed"]).choice(n, size=min(n, nlist * 64), replace=False))
        index.train(corpus.take(sample))
        index.nprobe = min(settings["ivf_nprobe"], nlist)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    if use_gpu and kind != "hnsw":
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
        index.referenced_resources = resources  # keep alive as long as the index
    for chunk in corpus.chunks(ADD_CHUNK):
        index.add(chunk)
    return index


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


def filter_hits(
    scores: np.ndarray, doc_rows: np.ndarray, excluded: set[int], candidates: int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop excluded documents and FAISS's -1 padding, keep the best `candidates` in rank order."""
    keep = doc_rows >= 0
    if excluded:
        keep &= ~np.isin(doc_rows, list(excluded))
    return doc_rows[keep][:candidates], scores[keep][:candidates]


def search(
    corpus_shards: list[str],
    query_shards: list[str],
    corpus_dir: str,
    queries_dir: str,
    qrels_dir: str,
    settings: dict,
    batch_size: int,
    out_mined: str,
    out_qrels: str,
) -> dict[str, int]:
    """Write the mined qrels (top candidates per query) and the exact cosines of the qrels documents."""
    corpus = ShardedEmbeddings(corpus_shards)
    queries = ShardedEmbeddings(query_shards)
    doc_ids = load_table(corpus_dir, ["id"])["id"].to_pylist()
    query_ids = load_table(queries_dir, ["id"])["id"].to_pylist()
    qrels = load_table(qrels_dir, ["query_id", "doc_id", "doc_row", "score", "positive"])
    if len(doc_ids) != len(corpus) or len(query_ids) != len(queries):
        raise ValueError("embedding shards do not match the prepared corpus/queries; rerun embed")

    query_row_of = {q: i for i, q in enumerate(query_ids)}
    qrels_query_rows = np.array([query_row_of[q] for q in qrels["query_id"].to_pylist()], dtype=np.int64)
    qrels_doc_rows = qrels["doc_row"].to_numpy().astype(np.int64)
    excluded = exclusions_by_query(qrels_query_rows, qrels_doc_rows)
    max_excluded = max((len(v) for v in excluded.values()), default=0)

    candidates = settings["candidates"]
    use_gpu = faiss_has_gpu(settings["device"])
    k = min(candidates + max_excluded, len(corpus))
    if use_gpu and k > GPU_MAX_K:
        log.warning("k=%d exceeds the faiss GPU limit of %d; searching on the CPU", k, GPU_MAX_K)
        use_gpu = False
    log.info(
        "index %s over %d documents (dim %d, %s); %d queries, k=%d (candidates %d + up to %d qrels documents)",
        settings["index"],
        len(corpus),
        corpus.dim,
        "GPU" if use_gpu else "CPU",
        len(queries),
        k,
        candidates,
        max_excluded,
    )
    index = build_index(corpus, settings["index"], settings, use_gpu)
    if settings["index"] == "hnsw":
        index.hnsw.efSearch = max(settings["hnsw_ef_search"], k)

    short = 0
    total = 0
    from tqdm import tqdm

    with atomic_output(out_mined) as tmp, pq.ParquetWriter(str(tmp), MINED_SCHEMA) as writer:
        for start in tqdm(range(0, len(queries), batch_size), desc="search", unit="batch", mininterval=5):
            block = np.ascontiguousarray(queries.take(np.arange(start, min(start + batch_size, len(queries)))))
            scores, rows = index.search(block, k)
            cols: dict[str, list] = {name: [] for name in MINED_SCHEMA.names}
            for offset in range(len(block)):
                q = start + offset
                kept_rows, kept_scores = filter_hits(scores[offset], rows[offset], excluded.get(q, set()), candidates)
                short += len(kept_rows) < candidates
                total += len(kept_rows)
                cols["query_id"] += [query_ids[q]] * len(kept_rows)
                cols["doc_id"] += [doc_ids[r] for r in kept_rows.tolist()]
                cols["query_row"] += [q] * len(kept_rows)
                cols["doc_row"] += kept_rows.tolist()
                cols["rank"] += list(range(1, len(kept_rows) + 1))
                cols["cosine"] += kept_scores.tolist()
            writer.write_table(pa.table(cols, schema=MINED_SCHEMA))

    qrels_cos = np.einsum("ij,ij->i", queries.take(qrels_query_rows), corpus.take(qrels_doc_rows))
    with atomic_output(out_qrels) as tmp:
        table = pa.table(
            {
                "query_id": qrels["query_id"],
                "doc_id": qrels["doc_id"],
                "query_row": pa.array(qrels_query_rows, pa.int32()),
                "doc_row": pa.array(qrels_doc_rows, pa.int64()),
                "score": qrels["score"].cast(pa.int32()),
                "positive": qrels["positive"],
                "cosine": pa.array(qrels_cos.astype(np.float32), pa.float32()),
            }
        )
        pq.write_table(table, str(tmp))
    log.info("mined %d candidates for %d queries; %d queries got fewer than %d", total, len(queries), short, candidates)
    return {"queries": len(queries), "candidates": total, "short": short}
