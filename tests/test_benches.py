"""Every bench in bench/ runs at its smoke size (`--smoke`: the same code at a tiny size) and prints its
result: a bench that breaks fails CI, not the next person who runs it by hand (bench/input_pipeline.py
failed from 148c6b2 until this test: its null model had no `eval`). The full-size figures stay a manual
run; the smoke sizes check only that the code runs and reports, not the figures' targets."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_DATASETS

NUMBER = r"[\d,]+(\.\d+)?"
BENCHES = {  # bench: (reads ../shared/datasets, has --workdir, what its output must hold)
    "bm25_scale.py": (
        False,
        True,
        [rf"3,000 negflow / bm25s: index time {NUMBER}x, search time {NUMBER}x \(content words {NUMBER}x\)"],
    ),
    "calibration.py": (
        True,
        True,
        [
            r"msmarco-two, roc-bound: 17 queries; \d+ of \d+ held-out positives",
            rf"budget 0\.05: .*measured {NUMBER}%",
            r"with the true count and pool weights \(roc-bound otherwise\):\n  sampler .*\n(  \w+ .*\n)*?"
            rf"  all +\d+ +{NUMBER}p",
        ],
    ),
    "calibration_scale.py": (False, True, [rf"calibrate / export \(baseline\): time {NUMBER}x, peak RSS {NUMBER}x"]),
    "cpu_vs_st.py": (
        True,
        True,
        [
            rf"negflow wall time / sentence-transformers: {NUMBER}x",
            rf"selected negatives overlap {NUMBER}%",
            rf"negflow rerun after relative_margin 0\.05 <-> 0\.1 +{NUMBER} +{NUMBER} of the full run",
        ],
    ),
    "distributed_index.py": (False, False, [rf"search job vs flat baseline: private memory {NUMBER}x"]),
    "export_memory.py": (False, True, [rf"peak RSS at 600 / at 300 queries: {NUMBER}x"]),
    "gpu_throughput.py": (
        False,
        False,
        [rf"\| embed, e5-base arch, 300 passages .* \| {NUMBER} docs/s", r"recall@100 vs fp32 [01]\.\d{4}"],
    ),
    "input_pipeline.py": (
        False,
        True,
        [rf"host path: {NUMBER} rows/s", rf"embed: {NUMBER}x the baseline's rows/s"],
    ),
    "pairs_scale.py": (False, True, [rf"lines/s: {NUMBER} \(target", rf"peak RSS / Arrow size: {NUMBER}x"]),
    "pairs_vs_anchors.py": (
        True,
        True,
        [
            r"candidates equal: True",
            r"negatives equal, sampling top: True",
            r"negflow FN rate / ST relative_margin=0\.05 FN rate = ",
        ],
    ),
    "prepare_workers.py": (False, True, [rf"2 workers / 1: {NUMBER}x", r"output folders byte-identical: yes"]),
    "rounds.py": (
        True,
        True,
        [
            rf"  round 2, continue +{NUMBER} +{NUMBER}\n  control: round 1 negatives again +{NUMBER}",
            rf"re-mining \(round 2 - control\): [+-]{NUMBER}, mean [+-]{NUMBER}",
            r"seed 42: hidden positives among the negatives: round 1 (\d+\.\d%|n/a), round 2 (\d+\.\d%|n/a)",
        ],
    ),
    "run_files.py": (
        False,
        True,
        [rf"trec arrow / line reader \(baseline\): lines/s {NUMBER}x", rf"jsonl arrow / line reader .* {NUMBER}x"],
    ),
    "sources.py": (
        True,
        True,
        [
            rf"msmarco-two: .*\n.*\ndense\+bm25 +all +\d+ +{NUMBER}% +{NUMBER}% +{NUMBER} +{NUMBER} +\d+",
            rf" +bm25 +\d+ +{NUMBER}%",
            r"bm25 only +\d+ +(\d+\.\d%|n/a) +(\d+\.\d%|n/a)\nall +\d+ .*\nhidden positives \(\d+\) against judged "
            r"non-relevant \(\d+\) among them, AUC: cosine (\d\.\d\d|n/a), cosine to a positive",
            rf"scifact-holdout: .*\n.*\ndense\+bm25 +all +\d+ +({NUMBER}%|n/a) +- +{NUMBER} +{NUMBER} +\d+",
            rf"nDCG@10 on train:\n  dense\+bm25 +{NUMBER} +mean {NUMBER}",
        ],
    ),
    "search_memory.py": (False, True, [rf"negflow peak RSS / embedding matrix: {NUMBER}x"]),
    "selection_vs_anchors.py": (
        True,
        True,
        [rf"negflow default \(end to end\) +{NUMBER}% +{NUMBER} +60", r"negflow FN rate / best anchor FN rate: "],
    ),
}


HELPERS = {"process_memory.py"}  # what benches import, not a bench


def test_every_bench_has_a_smoke_run():
    assert sorted(p.name for p in (REPO / "bench").glob("*.py") if p.name not in HELPERS) == sorted(BENCHES)


@pytest.mark.slow
@pytest.mark.parametrize("bench", sorted(BENCHES))  # each a work unit of its own (conftest.SPLIT_BY_TEST)
def test_a_bench_runs_at_its_smoke_size_and_reports(bench, tmp_path):
    shared, workdir, expected = BENCHES[bench]
    cmd = [sys.executable, str(REPO / "bench" / bench), "--smoke"]
    if shared:
        if not SHARED_DATASETS.is_dir() and os.environ.get("NEGFLOW_REQUIRE_SHARED_DATA") != "1":
            pytest.skip(f"shared datasets not found at {SHARED_DATASETS} (set NEGFLOW_SHARED_DATASETS)")
        cmd += ["--datasets", str(SHARED_DATASETS)]
    if workdir:
        cmd += ["--workdir", str(tmp_path)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path
    )
    assert done.returncode == 0, f"{bench} --smoke failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for pattern in expected:
        assert re.search(pattern, done.stdout), f"{bench} --smoke printed no /{pattern}/:\n{done.stdout[-3000:]}"
