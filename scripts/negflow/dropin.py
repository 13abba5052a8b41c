"""`negflow.mine_hard_negatives`: sentence-transformers' function of that name, run as the negflow workflow
in a cache folder, so that a second call that changes only selection settings reruns only the export."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from negflow import layout
from negflow.cli import run_workflow
from negflow.text_ids import normalise_all

ST_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")
DEFAULT_CANDIDATES = 100
# sentence-transformers' arguments and the negflow setting each one sets (a prompt name only when given);
# `batch_size` sets both models' batch sizes, `output_format` the one training file; the rest are data,
# models or performance knobs.
ST_SETTINGS = {
    "range_min": "range_min",
    "range_max": "range_max",
    "max_score": "max_score",
    "min_score": "min_score",
    "absolute_margin": "absolute_margin",
    "relative_margin": "relative_margin",
    "num_negatives": "num_negatives",
    "sampling_strategy": "sampling",
    "query_prompt": "query_prompt",
    "query_prompt_name": "query_prompt_name",
    "corpus_prompt": "doc_prompt",
    "corpus_prompt_name": "doc_prompt_name",
    "output_scores": "train_scores",
}


def _keep_if_same(tmp: Path, path: Path) -> str:
    """Move `tmp` to `path` unless `path` holds the same bytes already: an unchanged input keeps its
    modification time, so Snakemake reruns nothing for it."""
    if path.is_file() and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
    else:
        os.replace(tmp, path)
    return str(path)


def _model_hash(folder: Path) -> str:
    """The hash of a saved model's files, without what changes from save to save of the same model: the
    model card (README.md) and the tokenizer's runtime truncation and padding state in tokenizer.json."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "README.md"):
        data = path.read_bytes()
        if path.name == "tokenizer.json":
            tokenizer = {k: v for k, v in json.loads(data).items() if k not in ("truncation", "padding")}
            data = json.dumps(tokenizer, sort_keys=True).encode()
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + data)
    return digest.hexdigest()[:16]


def model_ref(model, kind: str, cache: Path) -> str | None:
    """A hub id or folder as given; a loaded SentenceTransformer / CrossEncoder saved under the cache in a
    folder named by the hash of its files (the same model maps to the same folder on every call)."""
    if model is None or isinstance(model, (str, os.PathLike)):
        return None if model is None else str(model)
    (cache / "models").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=cache / "models"))
    model.save(str(tmp))
    folder = cache / "models" / f"{kind}-{_model_hash(tmp)}"
    if folder.is_dir():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, folder)
    return str(folder)


def mine_hard_negatives(
    dataset,
    model,
    anchor_column_name: str | None = None,
    positive_column_name: str | None = None,
    corpus: list[str] | None = None,
    cross_encoder=None,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    num_negatives: int = 3,
    sampling_strategy: str = "top",
    query_prompt_name: str | None = None,
    query_prompt: str | None = None,
    corpus_prompt_name: str | None = None,
    corpus_prompt: str | None = None,
    include_positives: bool = False,
    output_format: str = "triplet",
    output_scores: bool = False,
    batch_size: int = 32,
    faiss_batch_size: int = 16384,
    use_faiss: bool = False,
    use_multi_process: list[str] | bool = False,
    verbose: bool = True,
    cache_folder: str | None = None,
    name: str = "dataset",
    cores: int | str = "all",
    gpus: int | None = None,
    **settings,
):
    """Add hard negatives to a `datasets.Dataset` of (anchor, positive) pairs, as sentence-transformers'
    `mine_hard_negatives` does, with the same arguments and the same columns for each `output_format`
    (anchor and positive columns keep the dataset's names), computed by the negflow workflow.

    The run lives in `cache_folder` (when None, a temporary folder, removed afterwards unless the run
    fails): call again with the same folder and only what a change touches reruns; a new `relative_margin`
    reruns the export alone, not the embedding. With `verbose`, it shows the jobs as `negflow mine` does.
    `model` and `cross_encoder` may be hub ids, folders, or loaded models (saved once into
    the cache under the hash of their files). Any negflow setting may be given as a keyword argument
    (`index="hnsw"`, `positive_doc_margin=None`, `seed=7`, `selection="auto", fn_budget=0.05` to let the
    run's own data choose the filters and sampler, `candidate_sources=["dense", "bm25"]` to pool BM25's
    candidates with the model's, ...); `name` names the dataset under
    `cache_folder/results/`, `cores` and `gpus` size the run.

    Where negflow differs, on purpose:
    - its positive-aware filters stay on unless turned off: `positive_doc_margin` (a candidate closer to a
      positive than the query is, a likely false negative) and `dup_threshold` (near-duplicates of a
      positive or of a kept negative); pass `positive_doc_margin=None, dup_threshold=None` for
      sentence-transformers' plain behaviour;
    - `sampling_strategy="random"` is seeded (`seed`) and keyed by query and document, so a rerun picks the
      same negatives;
    - repeated anchors are one query with all their positives (never each other's negatives), and an
      anchor's own text is never its negative.
    Arguments with no counterpart: `include_positives` (negflow never lists positives among negatives: a
    ValueError), and the performance knobs `faiss_batch_size`, `use_faiss` (negflow always searches with
    FAISS, see `index`), `use_multi_process` (use `gpus`). `batch_size` sets both models' batch sizes.
    """
    arguments = dict(locals())
    if include_positives:
        raise ValueError("include_positives has no counterpart in negflow: it never lists positives as negatives")
    if output_format not in ST_FORMATS:
        raise ValueError(f"Invalid output_format: {output_format}. Must be one of {', '.join(ST_FORMATS)}.")
    del faiss_batch_size, use_faiss, use_multi_process  # performance knobs of the in-memory function
    if not layout.is_dataset_name(name):
        raise ValueError(f"name: {layout.DATASET_NAME_RULE} (got {name!r})")
    columns = dataset.column_names
    anchor = anchor_column_name if anchor_column_name in columns else columns[0]
    if positive_column_name not in columns and len(columns) < 2:
        raise ValueError("Dataset must contain at least two columns to select the positive column automatically.")
    positive = positive_column_name if positive_column_name in columns else columns[1]

    temporary = cache_folder is None
    cache = Path(tempfile.mkdtemp(prefix="negflow-") if temporary else cache_folder).resolve()
    try:
        inputs = cache / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        pairs = dataset.select_columns([anchor, positive]).rename_columns({anchor: "anchor", positive: "positive"})
        pairs.to_parquet(str(inputs / f".{name}.pairs.parquet"))
        block = {"pairs": _keep_if_same(inputs / f".{name}.pairs.parquet", inputs / f"{name}.pairs.parquet")}
        texts = set(normalise_all(list(pairs["positive"])))  # the documents as read_pairs will hold them
        if corpus is not None:
            tmp = inputs / f".{name}.corpus.jsonl"
            tmp.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in corpus), "utf-8")
            block["corpus"] = _keep_if_same(tmp, inputs / f"{name}.corpus.jsonl")
            texts |= set(normalise_all(list(corpus)))
        block["embedding"] = model_ref(model, "embedding", cache)
        block["ce"] = model_ref(cross_encoder, "ce", cache)
        wanted = max(range_max or DEFAULT_CANDIDATES, range_min + num_negatives)
        texts.discard("")
        block["candidates"] = min(wanted, len(texts) - 1)  # the search needs a corpus larger than its candidates
        block |= {
            setting: arguments[name]
            for name, setting in ST_SETTINGS.items()
            if arguments[name] is not None or not name.endswith("_prompt_name")
        }
        block |= {
            "train_formats": [output_format],
            "st_layout": "per_positive",
            "embedding_batch_size": batch_size,
            "ce_batch_size": batch_size,
        }
        block |= settings
        target = layout.run_file(layout.export_sentence_transformers.data, name, format=output_format)
        run, _ = run_workflow(
            {"datasets": {name: block}},
            cache,
            targets=[target],
            show="progress" if verbose else None,
            cores=cores,
            gpus=gpus,
        )
        if run.returncode != 0:
            temporary = False  # its logs say why: the folder stays
            raise RuntimeError(
                f"negflow run failed in {cache} (its logs/ say why):\n"
                f"{(run.stdout or '')[-2000:]}{(run.stderr or '')[-4000:]}"
            )
        import datasets
        import pyarrow.parquet as pq

        mined = datasets.Dataset(pq.read_table(cache / target))
        return mined.rename_columns({k: v for k, v in (("anchor", anchor), ("positive", positive)) if k != v})
    finally:
        if temporary:
            shutil.rmtree(cache, ignore_errors=True)
