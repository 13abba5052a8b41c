"""Load sentence-transformers models and run them over pre-tokenized, length-sorted batches.

Tokenization happens once, in the prepare stages, through the model's own `preprocess` (so prompts,
truncation and special tokens are exactly what `encode`/`predict` would use); the GPU stages only pad
(vectorised, from the Arrow buffers, ahead of the device) and run the model's own modules (pooling,
normalisation, activation).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from negflow.errors import ConfigError
from negflow.files import write_json
from negflow.progress import ProgressBar
from negflow.refs import check_model_ref, floating_reference, resolve_model_ref
from negflow.store import same_extras

log = logging.getLogger("negflow")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config: device '{setting}' asked for, but torch sees no CUDA device")
    return device


def cpu_has_bf16() -> bool:
    """Native bf16 matrix units (AVX512-BF16 or AMX): there bf16 roughly doubles a small encoder's speed;
    elsewhere torch emulates it and it is slower than fp32."""
    import torch.cpu

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def compute_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """None means fp32. `auto` picks bf16 on GPUs that have it, fp16 on older GPUs, bf16 on CPUs with
    native bf16 units, else fp32."""
    if setting == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None
    return DTYPES[setting]


DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def model_pass(device: torch.device, dtype: torch.dtype | None) -> dict:
    """What a model pass ran on, as resolved: `auto` settings do not say which precision made the numbers.
    The device (a GPU by index and name), the precision, on a CPU whether bf16 ran on native units (else
    torch emulates it), and torch's version."""
    record = {"device": device.type, "dtype": DTYPE_NAMES[dtype]}
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        record |= {"device": f"cuda:{index}", "gpu": torch.cuda.get_device_name(index), "cuda": torch.version.cuda}
    elif device.type == "cpu":
        record["cpu_bf16"] = cpu_has_bf16()
    return record | {"torch": torch.__version__}


def write_model_pass(path: str, shard: str, device: torch.device, dtype: torch.dtype | None) -> None:
    """A shard job's `model_pass` as an output of its own, so export's provenance can gather it."""
    write_json(path, {"shard": shard, **model_pass(device, dtype)})


@dataclass(frozen=True)
class BatchLimits:
    """How big one forward pass may be: at most `rows` texts and `tokens` padded tokens (rows x the
    longest), `auto` tokens being the device's default. Performance only: results do not depend on it
    beyond float rounding."""

    rows: int
    tokens: int | str = "auto"

    AUTO_TOKENS = {"cpu": 4096, "cuda": 65536}  # CPU: small batches stay in cache; GPU: fill the device

    def token_budget(self, device: torch.device) -> int:
        if self.tokens == "auto":
            return self.AUTO_TOKENS.get(device.type, self.AUTO_TOKENS["cpu"])
        return int(self.tokens)


@dataclass(frozen=True)
class LoadOptions:
    """What decides which code and weights load for a model reference, beside the reference itself."""

    revision: str | None = None
    trust_remote_code: bool = False
    model_kwargs: dict = field(default_factory=dict)

    @classmethod
    def of(cls, settings: dict, kind: str) -> LoadOptions:
        """The options of the `embedding` or `ce` model in a rule's settings. Rules that only tokenize
        (prepare, prepare_ce_pairs) do not list the model kwargs: they change no token."""
        kwargs = settings.get(f"{kind}_model_kwargs") or {}
        return cls(settings[f"{kind}_revision"], settings["trust_remote_code"], kwargs)


MODEL_KINDS = {"embedding": "embedding model", "ce": "cross-encoder"}  # setting prefix: how messages name it


def _load(cls, ref: str, kind: str, device: torch.device, options: LoadOptions | None, **extra):
    what = MODEL_KINDS[kind]
    options = options or LoadOptions()
    check_model_ref(ref, what)
    if floating_reference(ref, options.revision):
        log.warning(
            "%s '%s' is a floating reference (revision %s): the hub may move it to other weights between runs; "
            "pin it with %s_revision: <commit>",
            what,
            ref,
            options.revision or "main",
            kind,
        )
    path = resolve_model_ref(ref)
    try:
        return cls(
            path,
            device=str(device),
            revision=options.revision,
            trust_remote_code=options.trust_remote_code,
            model_kwargs=dict(options.model_kwargs) or None,  # a copy: sentence-transformers pops keys from it
            **extra,
        )
    except Exception as e:  # transformers raises OSError/ValueError/KeyError for a folder that is no model
        if not options.trust_remote_code and "trust_remote_code=True" in str(e):
            opt_in = "set trust_remote_code: true if you trust its author"
            raise ConfigError(f"{what} '{ref}': this model runs its own code; {opt_in}") from None
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


def load_embedding_model(
    ref: str,
    device: torch.device,
    seq_len: int | None = None,
    options: LoadOptions | None = None,
    truncate_dim: int | None = None,
):
    """A SentenceTransformer whose `truncate_dim` (the configured one, else the one it was saved with) the
    embedding stages cut their vectors to, as `encode` does."""
    from sentence_transformers import SentenceTransformer

    model = _load(SentenceTransformer, ref, "embedding", device, options, truncate_dim=truncate_dim)
    with model.truncate_embeddings(None):
        full = model.get_embedding_dimension()
    if truncate_dim is not None and full is not None and truncate_dim > full:
        raise ConfigError(f"config: truncate_dim {truncate_dim} is larger than the {full} dimensions of '{ref}'")
    _set_seq_len(model, seq_len, "embedding model")
    return model.eval()


def configured_embedding_model(settings: dict, device: torch.device):
    """The `embedding` model of a rule's settings, loaded as the embed stage loads it."""
    options = LoadOptions.of(settings, "embedding")
    return load_embedding_model(
        settings["embedding"], device, settings["embedding_seq_len"], options, settings["truncate_dim"]
    )


# Texts that exercise what a tokenizer may do differently: case, accents, digits, punctuation, a long word,
# non-Latin scripts, an emoji, spacing.
TOKENIZER_PROBES = (
    "The Quick Brown Fox jumps over the LAZY dog.",
    "naïve café Über façade résumé ĳ ﬁ",
    "3.14159 1,000,000 2026-12-07 v2.0 #42 @user e-mail: a.b@c.org",
    "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
    "北京大学 東京 서울 Москва Αθήνα العربية हिन्दी",
    "emoji 🙂 and tabs\tand  double  spaces\nnew line",
    "(brackets) [square] {curly} <angle> \"quotes\" 'single' — dash … ellipsis",
)


def tokenizer_sha256(model) -> str:
    """A fingerprint of how the model turns text into token ids: the ids `tokenize` (prepare's own path,
    the model's text preprocessing included) gives a fixed set of probe texts, and the vocabulary. prepare
    records it with the tokens it writes, and embed refuses a model that would have tokenized them otherwise
    (a round's model must keep the tokenizer the corpus was tokenized with). Behaviour, not the tokenizer's
    saved form, which a `tokenizers` upgrade may write differently."""
    import hashlib
    import json

    vocab = model.tokenizer.get_vocab()
    # words of the model's own vocabulary as they are, capitalised and in capitals: case handling shows on
    # any vocabulary, not only on one that knows the fixed probes' words
    words = sorted({w for w in (t.lstrip("▁Ġ") for t in vocab) if w.isascii() and w.isalpha() and len(w) >= 4})
    words = words[:: max(1, len(words) // 64)][:64]
    probes = (*TOKENIZER_PROBES, " ".join(words), " ".join(w.title() for w in words), " ".join(map(str.upper, words)))
    columns, _ = tokenize(model, probes)
    spec = {"probes": columns["input_ids"].to_pylist(), "vocab": sorted(vocab.items())}
    return hashlib.sha256(json.dumps(spec, ensure_ascii=False).encode("utf-8")).hexdigest()


def load_cross_encoder(ref: str, device: torch.device, seq_len: int | None = None, options: LoadOptions | None = None):
    from sentence_transformers import CrossEncoder

    model = _load(CrossEncoder, ref, "ce", device, options)
    if model.num_labels != 1:
        raise ConfigError(f"cross-encoder '{ref}' has {model.num_labels} labels; negflow needs a 1-label reranker")
    _set_seq_len(model, seq_len, "cross-encoder")
    return model.eval()


def model_prompt(model, ref: str, role: str, explicit: str | None, chosen: str | None, own: str) -> str:
    """The prompt text of `role` (query or doc): the configured text, else the model's prompt chosen by
    name (`{role}_prompt_name`, as sentence-transformers' `prompt_name` picks it), else the model's own
    prompt `own` (e.g. e5's 'query: '), else none."""
    prompts = getattr(model, "prompts", None) or {}
    if explicit is not None:
        return explicit
    if chosen is None:
        return prompts.get(own) or ""
    if chosen not in prompts:
        have = ", ".join(f"'{p}'" for p in prompts) or "none"
        raise ConfigError(
            f"config: {role}_prompt_name: embedding model '{ref}' has no prompt '{chosen}' (its prompts: {have})"
        )
    return prompts[chosen]


def _char_length(item) -> int:
    """Characters in a text or a (query, document) pair: a cheap proxy for its token count."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, (tuple, list)):
        return sum(len(part) for part in item if isinstance(part, str))
    return 0


def tokenize(model, inputs: Sequence, prompt: str | None = None, chunk_rows: int = 256) -> tuple[dict, dict]:
    """Tokenize with the model's own preprocessing; return the unpadded token columns as Arrow list arrays
    (int32) plus `length`, in input order, and the batch-level extras (e.g. `prompt_length`) that the
    model's modules expect back at forward time.

    `preprocess` pads each call to its longest row, so inputs go through it in chunks of similar length (by
    characters), as numpy arrays; each chunk's tokens are cut out of the padding with its attention mask."""
    inputs = list(inputs)
    order = np.argsort(np.fromiter(map(_char_length, inputs), dtype=np.int64, count=len(inputs)), kind="stable")
    lengths = np.zeros(len(inputs), dtype=np.int32)
    chunks: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []  # (rows, lengths, tokens by key)
    extras: dict | None = None
    as_numpy = {"common": {"return_tensors": "np"}}
    for start in range(0, len(order), chunk_rows):
        rows = order[start : start + chunk_rows]
        features = model.preprocess([inputs[i] for i in rows], prompt=prompt or None, processing_kwargs=as_numpy)
        mask = np.asarray(features["attention_mask"]).astype(bool)
        tokens, chunk_extras = {}, {}
        for key, value in features.items():
            if key == "attention_mask":
                continue
            if isinstance(value, np.ndarray) and value.shape[:2] == mask.shape:
                tokens[key] = value[mask].astype(np.int32)  # row by row, whichever side the padding is on
            else:
                chunk_extras[key] = value.tolist() if isinstance(value, np.ndarray) else value
        extras = same_extras(extras, chunk_extras)
        lengths[rows] = mask.sum(axis=1)
        chunks.append((rows, lengths[rows], tokens))
    offsets = np.zeros(len(inputs) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    columns = {}
    for key in chunks[0][2] if chunks else ():
        values = np.empty(int(offsets[-1]), dtype=np.int32)
        for rows, chunk_lengths, tokens in chunks:
            before = np.cumsum(chunk_lengths) - chunk_lengths
            values[np.repeat(offsets[rows] - before, chunk_lengths) + np.arange(len(tokens[key]))] = tokens[key]
        columns[key] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    columns["length"] = pa.array(lengths)
    return columns, extras or {}


class TokenBatches:
    """The token columns of a tokenized table as flat numpy values and offsets (zero-copy from Arrow), padded
    a batch at a time with vectorised numpy: no Python object per row or token. Pads as the tokenizer's
    `pad` does (its padding side and pad ids), to a multiple of 8: fewer distinct shapes for oneDNN/cuBLAS
    to plan, aligned matrix tiles. On a GPU the batches are written into a ring of pinned buffers, so the
    copy to the device is asynchronous."""

    def __init__(self, table: pa.Table, tokenizer, device: torch.device, slots: int = 0):
        self.lengths = table.column("length").to_numpy().astype(np.int64)
        self.columns: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}  # name: (offsets, values, pad value)
        pads = {"input_ids": tokenizer.pad_token_id, "token_type_ids": tokenizer.pad_token_type_id}
        for name, pad in pads.items():
            if name in table.column_names:
                column = table.column(name).combine_chunks()  # offsets index the unsliced values
                self.columns[name] = (column.offsets.to_numpy().astype(np.int64), column.values.to_numpy(), pad or 0)
        self.left = tokenizer.padding_side == "left"
        self.device = device
        self.pinned = device.type == "cuda"
        self._slots: list[dict[str, torch.Tensor]] = []
        self._copied: list[torch.cuda.Event | None] = []
        self._capacity = 0
        self._next = 0
        self._slot_count = slots

    def width(self, idx: np.ndarray) -> int:
        return -(-max(int(self.lengths[idx].max()), 1) // 8) * 8

    def reserve(self, batches: list[np.ndarray]) -> None:
        """Size the pinned ring for the largest padded batch (GPU only)."""
        if not self.pinned:
            return
        need = max(len(b) * self.width(b) for b in batches)
        if need <= self._capacity:
            return
        self._capacity = need
        keys = [*self.columns, "attention_mask"]
        self._slots = [
            {k: torch.empty(need, dtype=torch.int64, pin_memory=True) for k in keys} for _ in range(self._slot_count)
        ]
        self._copied = [None] * self._slot_count

    def pad(self, idx: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
        """Rows `idx` padded: {input_ids, token_type_ids?, attention_mask} int64 arrays, and the pinned slot
        that holds them (-1 on a CPU)."""
        lengths = self.lengths[idx]
        rows, width = len(idx), self.width(idx)
        positions = np.arange(width)
        mask = positions >= width - lengths[:, None] if self.left else positions < lengths[:, None]
        before = np.cumsum(lengths) - lengths  # where each row starts among the batch's tokens
        within = np.arange(int(lengths.sum())) - np.repeat(before, lengths)
        slot = -1
        if self.pinned:
            slot, self._next = self._next, (self._next + 1) % len(self._slots)
            if self._copied[slot] is not None:
                self._copied[slot].synchronize()  # its previous batch has reached the device
            out = {k: v[: rows * width].view(rows, width).numpy() for k, v in self._slots[slot].items()}
        else:
            out = {k: np.empty((rows, width), dtype=np.int64) for k in [*self.columns, "attention_mask"]}
        for name, (offsets, values, pad) in self.columns.items():
            out[name].fill(pad)
            out[name][mask] = values[np.repeat(offsets[idx], lengths) + within]
        np.copyto(out["attention_mask"], mask, casting="unsafe")
        return out, slot

    def to_device(self, arrays: dict[str, np.ndarray], slot: int) -> dict[str, torch.Tensor]:
        """The batch as device tensors; on a GPU the copy is non-blocking and marks its slot reusable when
        done."""
        if slot >= 0:  # the pinned tensors themselves, which the arrays view
            rows, width = arrays["attention_mask"].shape
            arrays = {k: self._slots[slot][k][: rows * width].view(rows, width) for k in arrays}
        tensors = {k: torch.as_tensor(v).to(self.device, non_blocking=True) for k, v in arrays.items()}
        if slot >= 0:
            event = torch.cuda.Event()
            event.record()
            self._copied[slot] = event
        return tensors


def length_sorted_batches(lengths: np.ndarray, max_rows: int, max_tokens: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length, longest first (an OOM shows up at once). A batch
    holds as many rows as fit `max_tokens` padded tokens (rows x its longest row), at most `max_rows`, at
    least one: short texts go in large batches, long ones in small batches."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_rows, max_tokens // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


PREFETCH = 2  # batches padded ahead of the one on the device


@torch.inference_mode()
def run_model(
    model,
    table: pa.Table,
    extras: dict,
    output_key: str,
    limits: BatchLimits,
    device: torch.device,
    dtype: torch.dtype | None,
    desc: str,
    transform=None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (row indices, fp32 model output as numpy) over a tokenized table (`length` and token columns),
    in length-sorted batches; `transform` (e.g. normalisation, the activation) runs on the device first.

    A background thread pads the next batches while the device runs this one; on a GPU the copies in and
    out are asynchronous, and a batch's output is handed over once the next batch is running.
    bf16 casts the weights (same range as fp32, and on the CPU a fifth faster than autocast, which re-casts
    them every batch); fp16 runs under autocast, which keeps overflow-prone ops such as LayerNorm in fp32.
    A batch that runs out of GPU memory is retried as two: the rest of the rows are re-batched with half
    that batch's padded tokens (and rows), logged, down to one row per batch.
    The model runs in eval mode (dropout off), as sentence-transformers' encode runs it: the model that
    SentenceTransformerTrainer.train leaves behind is still in training mode."""
    model.eval()
    if dtype == torch.bfloat16:
        model.to(dtype)
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=dtype == torch.float16)
    batcher = TokenBatches(table, model.tokenizer, device, slots=PREFETCH + 2)
    lengths = batcher.lengths
    max_rows, max_tokens = limits.rows, limits.token_budget(device)
    batches = length_sorted_batches(lengths, max_rows, max_tokens)
    log.info(
        "%d rows, %d tokens in %d length-sorted batches (at most %d rows, %d padded tokens each)",
        len(lengths),
        int(lengths.sum()),
        len(batches),
        max_rows,
        max_tokens,
    )
    padding: deque = deque()  # futures of the padded batches after `done`, in order
    copying = None  # (rows, host output, event): a GPU batch whose output is still on its way to the host
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        ProgressBar(total=len(lengths), desc=desc, unit=" rows", mininterval=5) as bar,
    ):
        batcher.reserve(batches)
        done = 0
        while done < len(batches):
            while len(padding) < PREFETCH and done + len(padding) < len(batches):
                padding.append(pool.submit(batcher.pad, batches[done + len(padding)]))
            idx = batches[done]
            arrays, slot = padding.popleft().result()
            try:
                features = batcher.to_device(arrays, slot)
                features.update(extras)
                with autocast:
                    out = model(features)[output_key].float()
                if transform is not None:
                    out = transform(out)
            except torch.OutOfMemoryError:
                if len(idx) == 1:
                    raise
            else:
                if device.type == "cuda":
                    host = out.to("cpu", non_blocking=True)  # into pinned memory
                    event = torch.cuda.Event()
                    event.record()
                    if copying is not None:
                        copying[2].synchronize()
                        yield copying[0], copying[1].numpy()
                    copying = (idx, host, event)
                else:
                    yield idx, out.numpy()
                done += 1
                bar.update(len(idx))
                continue
            features = out = None  # free the failed batch's tensors before retrying
            for future in padding:  # padded for the old plan
                future.result()
            padding.clear()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            padded = len(idx) * max(int(lengths[idx].max()), 1)
            max_rows, max_tokens = max(1, len(idx) // 2), max(1, padded // 2)
            rest = np.concatenate(batches[done:])  # still longest first
            batches[done:] = [rest[b] for b in length_sorted_batches(lengths[rest], max_rows, max_tokens)]
            log.warning(
                "out of memory on a batch of %d rows (%d padded tokens): continuing with at most %d rows, "
                "%d padded tokens per batch",
                len(idx),
                padded,
                max_rows,
                max_tokens,
            )
        if copying is not None:
            copying[2].synchronize()
            yield copying[0], copying[1].numpy()


def limit_threads(threads: int) -> None:
    """Use the rule's threads for torch's CPU kernels (Snakemake also sets OMP_NUM_THREADS)."""
    torch.set_num_threads(max(1, threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
