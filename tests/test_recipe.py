"""config/recipes/st-training-data.yaml: with its files in one folder named once by `--config data_root=`,
every pair dataset reads in its own shape, and the whole collection plans as one run."""

from __future__ import annotations

import gzip
import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, snakemake

pytestmark = pytest.mark.slow  # every test here runs Snakemake or the real model

RECIPE = REPO / "config" / "recipes" / "st-training-data.yaml"

# The shape each file of the collection has (../shared/notes/pairs.md), as two lines of it.
SETS = {"altlex", "SimpleWiki"}
QUERY_PAIRS = {"searchQA_top5_snippets"}


def _lines(name: str) -> list:
    if name in SETS:
        return [{"set": ["a first sentence", "a simpler first sentence"]}, {"set": ["second one", "second"]}]
    if name in QUERY_PAIRS:
        return [{"query": "who wrote it", "pos": ["snippet one", "snippet two"]}, {"query": "when", "pos": ["today"]}]
    if name.startswith("stackexchange"):
        return [["how to sort a list", "sorting lists"], ["sorting lists", "how to sort a list"]]
    return [[f"{name} anchor one", f"{name} positive one"], [f"{name} anchor two", f"{name} positive two"]]


def test_the_recipe_reads_every_file_in_its_shape_and_plans_one_run(tmp_path):
    recipe = yaml.safe_load(RECIPE.read_text())
    datasets = recipe["datasets"]
    assert len(datasets) == 16 and recipe["data_root"] is None
    root = tmp_path / "data"
    root.mkdir()
    for name, block in datasets.items():
        if block.get("pairs", "").endswith(".jsonl.gz"):
            with gzip.open(root / block["pairs"], "wt", encoding="utf-8") as f:
                f.writelines(json.dumps(line) + "\n" for line in _lines(name))
    medmcqa = root / "medmcqa" / "data"
    medmcqa.mkdir(parents=True)
    table = {"question": ["What causes scurvy?", "Which nerve?"], "exp": ["Lack of vitamin C.", None]}
    pq.write_table(pa.table(table | {"opa": ["a", "b"], "cop": [1, 2]}), medmcqa / "train-00000-of-00001.parquet")
    hotpotqa = root / "hotpotqa"
    (hotpotqa / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "T", "text": f"body {i}"} for i in range(120)]  # more than candidates
    (hotpotqa / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (hotpotqa / "queries.jsonl").write_text('{"_id": "q1", "text": "question"}\n')
    (hotpotqa / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    workdir = tmp_path / "run"
    workdir.mkdir()
    shutil.copy(RECIPE, workdir / "config.yaml")
    pair_sets = [name for name, block in datasets.items() if "pairs" in block]
    targets = [f"results/{name}/read_pairs/manifest.json" for name in pair_sets]
    snakemake(workdir, "--config", f"data_root={root}", "--", *targets)
    for name in pair_sets:
        manifest = json.loads((workdir / f"results/{name}/read_pairs/manifest.json").read_text())
        counts = manifest["counts"]
        if name == "medmcqa":
            assert manifest["shape"] == "table columns" and counts["queries"] == 1 and counts["empty_positives"] == 1
            assert manifest["inputs"]["pairs"]["path"] == str(root / "medmcqa")
        elif name in SETS:
            assert manifest["shape"] == '{"set": [...]}' and counts["queries"] == 2
        elif name in QUERY_PAIRS:
            assert manifest["shape"] == '{"query", "pos", "neg"?}' and counts["positives"] == 3
        else:
            assert manifest["shape"] == '["anchor", "positive"]' and counts["positives"] == 2, name
    symmetric = json.loads(
        (
            workdir / "results/stackexchange_duplicate_questions_title-body_title-body/read_pairs/manifest.json"
        ).read_text()
    )
    assert symmetric["counts"]["own_text_excluded"] == 2
    plan = snakemake(workdir, "--config", f"data_root={root}", "--dry-run", "--quiet", "rules")
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", plan.stdout, re.M))
    assert "read_pairs" not in jobs  # read above: nothing to redo
    for rule in ("prepare", "embed", "search", "merge_candidates", "export_negatives", "export_flag", "plot_report"):
        assert jobs[rule] == "16", (rule, plan.stdout)
