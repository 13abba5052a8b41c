"""Proof stage: does training on the mined negatives beat the untrained model and training on random
negatives? Fine-tunes the embedding model twice with the configured loss (`finetune_loss`; same anchors,
same positives, same seed; only the negatives differ) and evaluates nDCG@10 on held-out qrels."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from negflow.evaluate import evaluate_model
from negflow.files import write_json
from negflow.judgments import load_judgments
from negflow.models import BatchLimits
from negflow.provenance import weights_sha256
from negflow.store import read_manifest
from negflow.training import iter_examples

log = logging.getLogger("negflow")


def training_rows(negatives_path: str, corpus_dir: str, queries_dir: str, num_negatives: int) -> dict[str, list]:
    """(anchor, positive, negative_1..n) per query-positive pair; queries with fewer mined negatives skip."""
    cols: dict[str, list] = {"anchor": [], "positive": [], **{f"negative_{k + 1}": [] for k in range(num_negatives)}}
    skipped = 0
    for batch in iter_examples(negatives_path, corpus_dir, queries_dir):
        for ex in batch:
            if len(ex.negatives) < num_negatives:
                skipped += 1
                continue
            for pos in ex.positives:
                cols["anchor"].append(ex.query)
                cols["positive"].append(pos)
                for k in range(num_negatives):
                    cols[f"negative_{k + 1}"].append(ex.negatives[k])
    log.info(
        "training rows: %d (%d queries with fewer than %d negatives skipped)",
        len(cols["anchor"]),
        skipped,
        num_negatives,
    )
    return cols


def with_random_negatives(rows: dict[str, list], corpus_texts: list[str], seed: int) -> dict[str, list]:
    """The same rows with each negative replaced by a random corpus document that is not the row's positive."""
    rng = np.random.default_rng(seed)
    out = {"anchor": rows["anchor"], "positive": rows["positive"]}
    n = len(corpus_texts)
    for key in (k for k in rows if k.startswith("negative_")):
        picks = []
        for positive in rows["positive"]:
            text = corpus_texts[int(rng.integers(n))]
            while text == positive:
                text = corpus_texts[int(rng.integers(n))]
            picks.append(text)
        out[key] = picks
    return out


def training_dtype(device):
    """The trainer's precision: bf16 mixed precision on a GPU, fp32 on the CPU."""
    import torch

    return torch.bfloat16 if device.type == "cuda" else None


def training_loss(model, settings: dict, limits: BatchLimits, device):
    """The configured loss: MultipleNegativesRankingLoss, or its GradCache form, which gives the same loss
    and gradients while it embeds a mini-batch at a time (a batch of thousands fits in memory): at most
    `limits.rows` texts, and no more than the device's token budget holds at the model's full length, since
    a training pass keeps its activations."""
    from sentence_transformers import losses

    if settings["finetune_loss"] == "CachedMultipleNegativesRankingLoss":
        rows = max(1, min(limits.rows, limits.token_budget(device) // model.max_seq_length))
        return losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=rows)
    return losses.MultipleNegativesRankingLoss(model)


def train(rows: dict[str, list], settings: dict, device, out_dir: str, limits: BatchLimits):
    """One run of the configured loss on the full embeddings (evaluation cuts them to `truncate_dim`);
    batches never hold the same text twice (NO_DUPLICATES). `limits`: the forward passes of the cached
    loss (memory only)."""
    import datasets
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.training_args import BatchSamplers

    from negflow.models import configured_embedding_model

    model = configured_embedding_model(settings, device)
    args = SentenceTransformerTrainingArguments(
        output_dir=out_dir,
        num_train_epochs=settings["finetune_epochs"],
        per_device_train_batch_size=settings["finetune_batch_size"],
        learning_rate=settings["finetune_learning_rate"],
        warmup_steps=settings["finetune_warmup_ratio"],  # a float below 1 is a ratio (warmup_ratio is deprecated)
        seed=settings["seed"],
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        use_cpu=device.type == "cpu",
        bf16=training_dtype(device) is not None,
        dataloader_drop_last=False,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict(rows),
        loss=training_loss(model, settings, limits, device),
    )
    trainer.train()
    return model


def finetune_report(
    negatives_path: str,
    corpus_dir: str,
    queries_dir: str,
    query_texts: dict[str, str],
    judged: dict,
    query_prompt: str | None,
    doc_prompt: str | None,
    settings: dict,
    limits,
    work_dir: str,
) -> dict:
    """nDCG@10 (and MRR@10, Recall@100) before training, after training on the mined negatives, and after
    training on random negatives, with wall times and the device and precision of training and evaluation.
    The prompts are the ones prepare used (its manifest)."""
    from negflow.models import configured_embedding_model, model_pass, pick_device
    from negflow.store import load_table

    device = pick_device(settings["device"])
    corpus = load_table(corpus_dir, ["id", "text"])
    doc_ids = corpus["id"].to_pylist()
    corpus_texts = corpus["text"].to_pylist()
    mined = training_rows(negatives_path, corpus_dir, queries_dir, settings["finetune_negatives"])
    if not mined["anchor"]:
        raise ValueError(f"{negatives_path}: no query has {settings['finetune_negatives']} negatives to train on")
    random_rows = with_random_negatives(mined, corpus_texts, settings["seed"])

    eval_dtype = None  # fp32: the figures compare models, not precisions

    def evaluate(model) -> dict:
        from negflow.evaluate import embed_texts

        corpus_emb = embed_texts(model, corpus_texts, doc_prompt, limits, device, eval_dtype)
        return evaluate_model(
            model,
            query_texts,
            judged,
            [corpus_emb],
            doc_ids,
            query_prompt,
            settings["min_positive_score"],
            limits,
            device,
            eval_dtype,
        )

    report: dict = {
        "training_rows": len(mined["anchor"]),
        "negatives_per_row": settings["finetune_negatives"],
        "model_passes": {
            "training": model_pass(device, training_dtype(device)),
            "evaluation": model_pass(device, eval_dtype),
        },
    }
    runs = {
        "untrained": lambda: configured_embedding_model(settings, device),
        "mined_negatives": lambda: train(mined, settings, device, f"{work_dir}/mined", limits),
        "random_negatives": lambda: train(random_rows, settings, device, f"{work_dir}/random", limits),
    }
    for name, make in runs.items():
        start = time.perf_counter()
        model = make()
        trained = time.perf_counter()
        metrics = evaluate(model)
        report[name] = {
            **metrics,
            "weights_sha256": weights_sha256(model),
            "train_seconds": round(trained - start, 1),
            "eval_seconds": round(time.perf_counter() - trained, 1),
        }
        log.info("%s: %s", name, report[name])
    report["mined_beats_untrained"] = report["mined_negatives"]["ndcg@10"] > report["untrained"]["ndcg@10"]
    report["mined_beats_random"] = report["mined_negatives"]["ndcg@10"] > report["random_negatives"]["ndcg@10"]
    return report


def finetune(inputs: Mapping, settings: dict, limits, out_path: str) -> dict:
    """Rule finetune: `finetune_report` on the rule's inputs (`negatives`, `corpus_dir`, `queries_dir`,
    `judgments`, `manifest`), training in a scratch folder beside `out_path` that is removed afterwards;
    the report, with the settings, written to `out_path`."""
    judged, query_texts = load_judgments(inputs["judgments"], "finetune")
    manifest = read_manifest(inputs["manifest"])
    work_dir = tempfile.mkdtemp(prefix=".finetune-", dir=Path(out_path).parent)
    try:
        report = finetune_report(
            inputs["negatives"],
            inputs["corpus_dir"],
            inputs["queries_dir"],
            query_texts,
            judged,
            manifest.query_prompt,
            manifest.doc_prompt,
            settings,
            limits,
            work_dir,
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    report["settings"] = settings
    write_json(out_path, report)
    return report


def train_round(inputs: Mapping, settings: dict, start: dict, limits: BatchLimits, out_dir: str) -> dict:
    """Rule train_round: the `start` model (its `embedding` and revision) trained as finetune trains (the
    finetune_* settings) on the previous round's `negatives`, saved whole to `out_dir` (written beside it,
    then renamed, so a killed job leaves no model behind). Counts: training rows, the weights' hash."""
    from negflow.errors import InputError
    from negflow.models import pick_device

    device = pick_device(settings["device"])
    rows = training_rows(
        inputs["negatives"], inputs["corpus_dir"], inputs["queries_dir"], settings["finetune_negatives"]
    )
    if not rows["anchor"]:
        raise InputError(
            f"{inputs['negatives']}: no query has {settings['finetune_negatives']} negatives to train the next "
            "round on; lower finetune_negatives or mine more negatives"
        )
    parent = Path(out_dir).parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(".train-round-*"):  # a killed job's scratch: only this round's job writes here
        shutil.rmtree(stale, ignore_errors=True)
    work = tempfile.mkdtemp(prefix=".train-round-", dir=parent)
    try:
        model = train(rows, settings | start, device, f"{work}/trainer", limits)
        model.save(f"{work}/model")
        os.replace(f"{work}/model", out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counts = {"training_rows": len(rows["anchor"]), "started_from": start["embedding"]}
    log.info("trained %s from %s on %d rows", out_dir, start["embedding"], counts["training_rows"])
    return counts | {"weights_sha256": weights_sha256(model)}
