"""GPU throughput of negflow's three heavy passes, each next to the device's measured FLOP limit.

1. embed: synthetic MS MARCO-like passages (token lengths log-normal, mean about 75, 8 to 512) through a
   random-init BERT-base-sized SentenceTransformer (e5-base architecture: 12 layers, 768 wide, mean pooling),
   saved to disk and loaded by negflow's loader, run by `negflow.models.run_model` exactly as the embed rule
   does (token-budget batches, embedding_dtype auto);
2. score: (query, passage) pairs (query about 10 tokens) through a random-init XLM-R-large-sized 1-label
   CrossEncoder (bge-reranker-v2-m3 architecture: 24 layers, 1024 wide), the score rule's path;
3. search: exact top-100 of 100k queries over 2M x 768 unit vectors with `negflow.search.exact_top_k` on the
   GPU (torch matmul + running top-k over corpus chunks), in fp32 (TF32 off: exact), TF32 and bf16, with
   the bf16/TF32 recall of the fp32 top-100; FAISS GPU flat beside it where faiss has GPU support.

The limit is a large bf16 matmul measured here (not the datasheet). Model FLOPs: 2 x non-embedding
parameters per token plus attention (4 x layers x width x padded length per token). Baselines named in
the table: negminer's reported 7,300 docs/s (e5-base) and 1,200 pairs/s (bge-reranker-v2-m3) per GPU.

Usage: python bench/gpu_throughput.py [--docs 200000] [--pairs 50000] [--results bench/RESULTS.md]
       python bench/gpu_throughput.py --smoke   # tiny sizes, any device: checks the code path only
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

NEGMINER = {"embed": 7300, "score": 1200}  # per GPU, from negminer's README (RTX 4090)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_limit(device, n: int) -> float:
    """FLOP/s of an n x n x n bf16 matmul (the best of 10 after warm-up)."""
    import torch

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def vocab_dir(path: Path, size: int) -> Path:
    """A WordPiece tokenizer with `size` entries: only its pad id and padding side matter here."""
    from transformers import BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (path / "vocab.txt").write_text("\n".join(specials + [f"w{i}" for i in range(size - len(specials))]) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))
    return path


def encoder_shape(vocab: int, layers: int, width: int, positions: int) -> dict:
    """A BERT-family encoder's size: 64-wide heads and a 4x feed-forward, as BERT, e5 and XLM-R have."""
    return dict(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        intermediate_size=4 * width,
        max_position_embeddings=positions,
    )


def build_embedder(root: Path, layers: int, width: int) -> Path:
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    hf = vocab_dir(root / "e5-hf", 30522)
    config = BertConfig(**encoder_shape(30522, layers, width, 512))
    BertModel(config).save_pretrained(str(hf))
    transformer = models.Transformer(str(hf), max_seq_length=512)
    pooling = models.Pooling(width, pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu").save(str(root / "e5"))
    return root / "e5"


def build_cross_encoder(root: Path, layers: int, width: int) -> Path:
    from sentence_transformers import CrossEncoder
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    hf = vocab_dir(root / "xlmr-hf", 250002)
    config = XLMRobertaConfig(**encoder_shape(250002, layers, width, 514), num_labels=1, pad_token_id=0)
    XLMRobertaForSequenceClassification(config).save_pretrained(str(hf))
    CrossEncoder(str(hf), device="cpu", max_length=512).save(str(root / "reranker"))
    return root / "reranker"


def passage_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    """Token counts of MS MARCO-like passages: log-normal, mean about 75, clipped to 8..512."""
    return np.clip(np.round(rng.lognormal(np.log(68), 0.45, n)), 8, 512).astype(np.int64)


def token_rows(rng: np.random.Generator, lengths: np.ndarray, vocab: int):
    """A tokenized table as prepare writes it: [CLS] ids [SEP], token types, lengths."""
    import pyarrow as pa

    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    ids = rng.integers(5, vocab, int(lengths.sum()))
    ids[offsets[:-1]], ids[offsets[1:] - 1] = 2, 3
    return pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(offsets, ids),
            "token_type_ids": pa.ListArray.from_arrays(offsets, np.zeros(len(ids), np.int64)),
            "length": lengths,
        }
    )


def model_flops(model, lengths: np.ndarray) -> float:
    """2 x non-embedding parameters per token + attention scores and mixing (4 x layers x width x length)."""
    encoder = model[0].auto_model
    config = encoder.config
    params = sum(p.numel() for name, p in encoder.named_parameters() if "embeddings" not in name)
    attention = 4 * config.num_hidden_layers * config.hidden_size * (lengths.astype(np.float64) ** 2).sum()
    return 2 * params * lengths.sum() + attention


def run_pass(model, rows, key: str, device, dtype) -> float:
    """Seconds for one pass over `rows` with the rules' batching (one warm-up pass on a slice first)."""
    from negflow.models import BatchLimits, run_model

    limits = BatchLimits(512, "auto")
    for _ in run_model(model, rows.slice(0, 2000), {}, key, limits, device, dtype, "warm-up"):
        pass
    synchronize(device)
    start = time.perf_counter()
    for _ in run_model(model, rows, {}, key, limits, device, dtype, key):
        pass
    synchronize(device)
    return time.perf_counter() - start


def model_figure(model, stage: str, arch: str, unit: str, rows, lengths, device, dtype, limit: float) -> tuple:
    """One table row: a model pass over synthetic token rows of the given lengths, its rate, its share of
    the FLOP limit and its ratio to negminer's reported rate for the same stage."""
    key = "sentence_embedding" if stage == "embed" else "scores"
    seconds = run_pass(model, rows, key, device, dtype)
    rate = len(lengths) / seconds
    return (
        f"{stage}, {arch}, {len(lengths):,} {unit} (mean {lengths.mean():.0f} tokens)",
        rate,
        f"{'docs' if stage == 'embed' else unit}/s",
        seconds,
        model_flops(model, lengths) / seconds / limit,
        f"{rate / NEGMINER[stage]:.1f}x negminer's {NEGMINER[stage]:,}",
    )


def search_figures(device, n_docs: int, n_queries: int, dim: int, limit: float) -> list[tuple]:
    import torch

    from negflow.search import exact_top_k

    gen = torch.Generator(device=device).manual_seed(0)
    corpus = torch.nn.functional.normalize(torch.randn(n_docs, dim, device=device, generator=gen), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(n_queries, dim, device=device, generator=gen), dim=1)
    chunk = 262_144
    rows_out, figures = {}, []
    flops = 2.0 * n_docs * n_queries * dim
    for name, dtype, tf32 in (("fp32", None, False), ("tf32", None, True), ("bf16", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        chunks = [corpus[i : i + chunk] for i in range(0, n_docs, chunk)]
        if dtype is not None:
            chunks = [c.to(dtype) for c in chunks]
        dtype = dtype or torch.float32
        top = []
        synchronize(device)
        start = time.perf_counter()
        for s in range(0, n_queries, 16_384):
            top.append(exact_top_k(queries[s : s + 16_384], chunks, 100, str(device), dtype))
        synchronize(device)
        seconds = time.perf_counter() - start
        rows_out[name] = np.concatenate(top)
        recall = np.mean(
            [len(np.intersect1d(a, b)) / 100 for a, b in zip(rows_out[name], rows_out["fp32"], strict=True)]
        )
        figures.append(
            (
                f"search top-100, {n_queries:,} x {n_docs:,} x {dim}, torch {name}",
                n_queries / seconds,
                "queries/s",
                seconds,
                flops / seconds / limit,
                f"recall@100 vs fp32 {recall:.4f}",
            )
        )
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        import faiss

        if faiss.get_num_gpus() > 0:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, faiss.IndexFlatIP(dim))
            index.add(corpus.cpu().numpy())
            start = time.perf_counter()
            index.search(queries.cpu().numpy(), 100)
            seconds = time.perf_counter() - start
            figures.append(
                (
                    "search top-100, FAISS GPU IndexFlatIP",
                    n_queries / seconds,
                    "queries/s",
                    seconds,
                    flops / seconds / limit,
                    "incl. host transfers",
                )
            )
    except ImportError:
        pass
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--pairs", type=int, default=50_000)
    parser.add_argument("--search-docs", type=int, default=2_000_000)
    parser.add_argument("--search-queries", type=int, default=100_000)
    parser.add_argument("--results", default=str(REPO / "bench/RESULTS.md"))
    parser.add_argument("--smoke", action="store_true", help="tiny models and sizes on any device")
    args = parser.parse_args()
    import torch

    from negflow.models import compute_dtype, load_cross_encoder, load_embedding_model, pick_device

    device = pick_device("auto")
    if device.type != "cuda" and not args.smoke:
        sys.exit("no CUDA device: run on a GPU, or pass --smoke to check the code path on this machine")
    if args.smoke:
        args.docs, args.pairs, args.search_docs, args.search_queries = 300, 200, 5000, 300
    e5 = (2, 128) if args.smoke else (12, 768)
    xlmr = (2, 128) if args.smoke else (24, 1024)
    dtype = compute_dtype("auto", device)
    limit = matmul_limit(device, 1024 if args.smoke else 8192)
    rng = np.random.default_rng(0)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        embedder = load_embedding_model(str(build_embedder(Path(tmp), *e5)), device)
        lengths = passage_lengths(rng, args.docs)
        rows = token_rows(rng, lengths, 30522)
        figures.append(model_figure(embedder, "embed", "e5-base arch", "passages", rows, lengths, device, dtype, limit))
        del embedder

        reranker = load_cross_encoder(str(build_cross_encoder(Path(tmp), *xlmr)), device, 512)
        pair_lengths = np.minimum(passage_lengths(rng, args.pairs) + rng.integers(6, 16, args.pairs), 512)
        arch = "bge-reranker-v2-m3 arch"
        rows = token_rows(rng, pair_lengths, 250002)
        figures.append(model_figure(reranker, "score", arch, "pairs", rows, pair_lengths, device, dtype, limit))
        del reranker
        if device.type == "cuda":
            torch.cuda.empty_cache()
    figures += search_figures(device, args.search_docs, args.search_queries, 768, limit)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    header = (
        f"{name}, torch {torch.__version__}, dtype {dtype or 'fp32'}; FLOP limit = measured matmul (bf16 on GPUs) "
        f"{limit / 1e12:.1f} TFLOP/s"
    )
    lines = ["| pass | throughput | seconds | share of FLOP limit | note |", "|---|---|---|---|---|"]
    lines += [
        f"| {p} | {r:,.0f} {unit} | {s:.2f} | {100 * share:.1f}% | {note} |" for p, r, unit, s, share, note in figures
    ]
    print(header)
    print("\n".join(lines))
    if not args.smoke:
        command = "python " + " ".join(sys.argv)
        section = f"\n## {datetime.date.today()}: {header}\n\n`{command}`\n\n" + "\n".join(lines) + "\n"
        results = Path(args.results)
        if not results.exists():
            results.write_text("# GPU benchmark results (bench/gpu_throughput.py)\n")
        results.write_text(results.read_text() + section)


if __name__ == "__main__":
    main()
