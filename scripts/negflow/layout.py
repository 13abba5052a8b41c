"""Where a run writes, relative to its folder: every rule's outputs by rule and output name, all under
`results/{dataset}/` (a stage's own files in a folder of its own). The one table of paths: the rules
declare their `output:` from it (and read another rule's files as `rules.<rule>.output.<name>`), and the
`negflow` command and the drop-in function find the files a run delivers in it. `{scatteritem}` is a
shard (`shards`), `{format}` a training format."""

from __future__ import annotations

import re
from types import SimpleNamespace

# A dataset's name is a folder under results/: letters, digits, '_', '.', '-', not starting with a dot (so
# never '.', '..' or a hidden folder).
DATASET_NAME = r"[A-Za-z0-9_-][A-Za-z0-9_.-]*"
DATASET_NAME_RULE = "dataset names use letters, digits, '_', '.', '-' only and do not start with '.'"


# A job's {dataset}: a configured dataset, or one of its mining rounds (rounds.round_dataset).
ROUND_WILDCARD = DATASET_NAME + r"/rounds/([2-9]|[1-9][0-9]+)"  # a round that trains: 2 on
DATASET_WILDCARD = DATASET_NAME + r"(/rounds/[0-9]+)?"


def is_dataset_name(name: object) -> bool:
    return isinstance(name, str) and re.fullmatch(DATASET_NAME, name) is not None


def _results(**paths: str) -> SimpleNamespace:
    return SimpleNamespace(**{name: f"results/{{dataset}}/{path}" for name, path in paths.items()})


read_pairs = _results(
    corpus="read_pairs/corpus.parquet",
    queries="read_pairs/queries.parquet",
    qrels="read_pairs/qrels.parquet",
    query_lines="read_pairs/query_lines.parquet",
    doc_hashes="read_pairs/doc_hashes.parquet",
    manifest="read_pairs/manifest.json",
)
prepare = _results(
    corpus="prepare/corpus",
    queries="prepare/queries",
    qrels="prepare/qrels",
    holdout="prepare/holdout.parquet",
    manifest="prepare/manifest.json",
)
prepare_judgments = _results(judgments="prepare/judgments.parquet")
embed = _results(
    corpus="embed/corpus/{scatteritem}.npy",
    queries="embed/queries/{scatteritem}.npy",
    model_pass="embed/passes/{scatteritem}.json",
)
train_index = _results(trained="search/index/trained.faiss")
add_to_index = _results(part="search/index/parts/{scatteritem}.faiss")
build_index = _results(index="search/index.faiss")
search = _results(candidates="search/candidates/{scatteritem}.parquet")
merge_candidates = _results(candidates="search/candidates.parquet")
compute_qrels_cosines = _results(cosines="search/qrels_cosine.parquet")
index_bm25 = _results(index="bm25/index")
search_bm25 = _results(candidates="bm25/candidates/{scatteritem}.parquet")
merge_bm25_candidates = _results(candidates="bm25/candidates.parquet")
read_run = _results(candidates="runs/{source}.parquet")  # {source}: the run's source name (sources.source_name)
fuse_candidates = _results(candidates="fuse/candidates.parquet")
prepare_ce_pairs = _results(pairs="score/ce_pairs")
score_pairs = _results(scores="score/shards/{scatteritem}.parquet", model_pass="score/passes/{scatteritem}.json")
merge_scores = _results(scores="score/pair_scores.parquet")
calibrate_selection = _results(calibration="calibrate/calibration.json")
export_negatives = _results(
    negatives="negatives.jsonl",
    report="selection.json",
    provenance="negatives.provenance.json",
)
export_flag = _results(data="train/flag.jsonl", provenance="train/flag.provenance.json")
export_sentence_transformers = _results(data="train/{format}.parquet", provenance="train/{format}.provenance.json")
plot_report = _results(
    summary="report/summary.html",
    scores="report/scores.png",
    ranks="report/ranks.png",
    examples="report/examples.html",
)
plot_calibration = _results(figure="report/calibration.png")
plot_rounds = _results(summary="report/rounds.json", figure="report/rounds.png")
audit = _results(report="audit.json")
finetune = _results(report="finetune/report.json")
train_round = _results(model="model")  # {dataset}: a round's dataset (results/NAME/rounds/R/model)


def run_file(pattern: str, dataset: str, **wildcards: str) -> str:
    """One file of a table entry (e.g. `export_negatives.report`) for a dataset and the entry's other
    wildcards, relative to the run folder."""
    return pattern.format(dataset=dataset, **wildcards)
