"""Load sentence-transformers models and run them over pre-tokenized, length-sorted batches.

Tokenization happens once, in the prepare stages, through the model's own `preprocess` (so prompts,
truncation and special tokens are exactly what `encode`/`predict` would use); the GPU stages only pad
and run the model's own modules (pooling, normalisation, activation).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from negflow.config import ConfigError, check_model_ref, resolve_model_ref

log = logging.getLogger("negflow")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config: device '{setting}' asked for, but torch sees no CUDA device")
    return device


def compute_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """None means fp32. `auto` picks bf16 on GPUs that have it, fp16 on older GPUs, fp32 on the CPU."""
    if setting == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return DTYPES[setting]


def _load(cls, ref: str, what: str, device: torch.device):
    check_model_ref(ref, what)
    path = resolve_model_ref(ref)
    try:
        return cls(path, device=str(device))
    except Exception as e:  # transformers raises OSError/ValueError/KeyError for a folder that is no model
        reason = " ".join(str(e).split())[:300]
        raise ConfigError(f"{what} '{ref}': cannot load as a {cls.__name__} ({type(e).__name__}: {reason})") from None


POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert")  # position ids start after the pad id


def token_limit(model) -> int | None:
    """The longest input the model can take: its tokenizer's limit and its position embeddings."""
    limits = []
    tokenizer_max = getattr(model.tokenizer, "model_max_length", None)
    if tokenizer_max and tokenizer_max < 100_000:  # unset limits are reported as a huge number
        limits.append(tokenizer_max)
    config = getattr(getattr(model[0], "model", None), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        limits.append(positions - (2 if config.model_type in POSITION_OFFSET_MODELS else 0))
    return min(limits) if limits else None


def _set_seq_len(model, seq_len: int | None, what: str) -> None:
    if seq_len is None:
        return
    limit = token_limit(model)
    if limit is not None and seq_len > limit:
        log.info("%s takes at most %d tokens; using %d instead of the configured %d", what, limit, limit, seq_len)
        seq_len = limit
    model.max_seq_length = seq_len


def load_embedding_model(ref: str, device: torch.device, seq_len: int | None = None):
    from sentence_transformers import SentenceTransformer

    model = _load(SentenceTransformer, ref, "embedding model", device)
    _set_seq_len(model, seq_len, "embedding model")
    return model.eval()


def load_cross_encoder(ref: str, device: torch.device, seq_len: int | None = None):
    from sentence_transformers import CrossEncoder

    model = _load(CrossEncoder, ref, "cross-encoder", device)
    if model.num_labels != 1:
        raise ConfigError(f"cross-encoder '{ref}' has {model.num_labels} labels; negflow needs a 1-label reranker")
    _set_seq_len(model, seq_len, "cross-encoder")
    return model.eval()


def model_prompt(model, explicit: str | None, name: str) -> str:
    """The configured prompt, else the model's own prompt of that name (e.g. e5's 'query: '), else none."""
    if explicit is not None:
        return explicit
    return (getattr(model, "prompts", None) or {}).get(name) or ""


def tokenize(model, inputs: Sequence, prompt: str | None = None) -> tuple[dict[str, list], dict]:
    """Tokenize with the model's own preprocessing; return unpadded per-row token lists and the
    batch-level extras (e.g. `prompt_length`) that the model's modules expect back at forward time."""
    features = model.preprocess(list(inputs), prompt=prompt or None)
    mask = features["attention_mask"].bool()
    rows: dict[str, list] = {}
    extras: dict = {}
    for key, value in features.items():
        if key == "attention_mask":
            continue
        if isinstance(value, torch.Tensor) and value.shape[:2] == mask.shape:
            rows[key] = [v[m].tolist() for v, m in zip(value, mask, strict=True)]
        else:
            extras[key] = value.tolist() if isinstance(value, torch.Tensor) else value
    rows["length"] = mask.sum(dim=1).tolist()
    return rows, extras


def collate(tokenizer, batch: dict[str, list], extras: dict, device: torch.device) -> dict:
    """Pad one batch of token lists the tokenizer's way (side, pad id) and add the attention mask."""
    token_keys = [k for k in batch if k != "length"]
    padded = tokenizer.pad({k: batch[k] for k in token_keys}, padding=True, return_tensors="pt")
    features = {k: v.to(device, non_blocking=True) for k, v in padded.items()}
    features.update(extras)
    return features


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length, longest first (an OOM shows up at once)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def run_model(
    model,
    rows,
    extras: dict,
    output_key: str,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
    desc: str,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (row indices, model output) over a tokenized `datasets.Dataset`, in length-sorted batches."""
    if device.type == "cuda" and dtype is not None:
        model.to(dtype)
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    token_columns = [c for c in rows.column_names if c in ("input_ids", "token_type_ids", "length")]
    rows = rows.select_columns(token_columns)
    lengths = rows.select_columns(["length"]).with_format("arrow")[:]["length"].to_numpy()
    batches = length_sorted_batches(lengths, batch_size)
    with tqdm(total=len(lengths), desc=desc, unit="row", file=None, mininterval=5) as bar:
        for idx in batches:
            features = collate(model.tokenizer, rows[idx.tolist()], extras, device)
            with autocast:
                out = model(features)[output_key]
            yield idx, out.float()
            bar.update(len(idx))


def limit_threads(threads: int) -> None:
    """Use the rule's threads for torch's CPU kernels (Snakemake also sets OMP_NUM_THREADS)."""
    torch.set_num_threads(max(1, threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
