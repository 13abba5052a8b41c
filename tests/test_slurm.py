"""The end-to-end fixture run through a real SLURM with profiles/slurm: every rule a SLURM job, GPU rules
submitted with --gpus and running on the GPU SLURM assigned, the result equal to the local run's, and
negflow's display showing each job's counts, or its error, from status files stamped by a clock a day off.

CI starts a single-node SLURM with two fake GPUs (.ci/slurm.sh start) and sets NEGFLOW_REQUIRE_SLURM=1,
so there a missing SLURM fails instead of skipping."""

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, assert_same_negatives, fused_in_one_piece, gpu_rules, snakemake, write_config

from negflow.negatives import read_negatives


def slurm_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return proc.returncode == 0 and any(s.startswith(("idle", "mix")) for s in proc.stdout.split())


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not slurm_is_up() and os.environ.get("NEGFLOW_REQUIRE_SLURM") != "1",
        reason="no SLURM reachable (start one with `.ci/slurm.sh start`)",
    ),
]

GPU_RULES = gpu_rules()
LOCAL_RULES = {"take_last_round", "take_last_audit"}  # copies: Snakemake runs them itself (Snakefile's localrules)
DAY = 86400.0
# On PYTHONPATH, so every Python process of the run loads it: a status file (progress) stamped a day behind,
# as a compute node whose clock is off stamps it on a shared filesystem.
SKEWED_CLOCK = """
import os

_replace = os.replace


def replace(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    if str(dst).endswith(".progress"):
        stamp = os.stat(dst).st_mtime - 86400
        os.utime(dst, (stamp, stamp))


os.replace = replace
"""


# Runs Snakemake with the SLURM executor polling every 2 s. The plugin adds 10 s to its wait after each poll
# that finds no job finished, so a 12 s job was seen ~20 s after it ended, and the run spent 100 of its
# 210 s waiting on polls. Timing only: what the jobs do and what SLURM is asked is unchanged.
STEADY_POLLING = """
import runpy
import sys

from snakemake_executor_plugin_slurm import Executor

assert isinstance(Executor.next_seconds_between_status_checks, property)
Executor.next_seconds_between_status_checks = property(lambda self: 2.0, lambda self, value: None)
sys.argv[0] = "snakemake"
runpy.run_module("snakemake", run_name="__main__", alter_sys=True)
"""


def skewed_clock(tmp_path) -> dict[str, str]:
    """The environment of a run whose jobs stamp their status files a day behind (SKEWED_CLOCK)."""
    site = tmp_path / "skewed-clock"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SKEWED_CLOCK)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def assert_stamped_a_day_behind(workdir) -> None:
    statuses = list((workdir / "logs").rglob("*.progress"))
    assert statuses and all(path.stat().st_mtime < time.time() - DAY + 3600 for path in statuses)


def scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def slurm_run(workdir, check: bool = True) -> list[str]:
    """The workflow in `workdir` through SLURM, shown by negflow's display (as `negflow mine --profile
    slurm` shows it), its jobs' status files stamped a day behind; the lines it showed."""
    launcher = workdir / "steady_polling.py"
    launcher.write_text(STEADY_POLLING)
    proc = snakemake(
        workdir,
        "--workflow-profile",
        str(REPO / "profiles" / "slurm"),
        # faster polling than the profile's (timing only; still well within MinJobAge/3)
        "--slurm-init-seconds-before-status-checks=2",
        "--seconds-between-status-checks=2",
        "--logger=negflow",
        check=check,
        env=skewed_clock(workdir),
        timeout=1200,
        launcher=(str(launcher),),
    )
    return (proc.stdout + proc.stderr).splitlines()


def started(shown: list[str]) -> Counter:
    """Rule -> how many jobs the display showed starting."""
    return Counter(line.split()[1] for line in shown if line.startswith("▶ "))


def test_fixture_run_through_slurm_equals_the_local_run(tmp_path, dataset_block, tiny_models, local_ce_run):
    """Also the display's counts from statuses stamped a day behind: catches a display that judges a status
    by its mtime (the window after time.time() - 1.0 it had hid every count here)."""
    assert slurm_is_up(), "SLURM is required here but sinfo shows no usable node"
    write_config(tmp_path, {"fx": {**dataset_block, "ce": str(tiny_models["ce"])}}, scatter={"embed": 2})
    shown = slurm_run(tmp_path)
    planned = started(shown)
    assert planned["embed"] == 2 and planned["score_pairs"] == 1  # corpus and queries shard together
    assert_stamped_a_day_behind(tmp_path)
    for shard in ("1-of-2", "2-of-2"):
        assert any(
            re.fullmatch(rf"✓ embed fx {shard} \(\d+\.\d s\): [\d,]+ documents, [\d,]+ queries", x) for x in shown
        )
    assert any(re.fullmatch(r"✓ export_negatives fx \(\d+\.\d s\): .*[\d,]+ negatives", x) for x in shown), shown

    assert slurm_devices(tmp_path, shown) == {"0", "1"}  # GPU jobs ran side by side on both of the node's GPUs
    assert_same_negatives(tmp_path / "results/fx/negatives.jsonl", local_ce_run / "results/fx/negatives.jsonl")


def slurm_devices(workdir, shown: list[str]) -> set[str]:
    """Check that every job the run showed ran as a SLURM job of its own that completed (the local rules'
    without one), GPU rules with `--gpus=1` on the gpu partition and on the GPU SLURM assigned, the others on
    the cpu partition; the GPUs the GPU jobs used."""
    planned = started(shown)
    for rule in LOCAL_RULES & set(planned):
        for log in (workdir / "logs" / rule).rglob("*.log"):
            assert "running as SLURM job" not in log.read_text(), log
        del planned[rule]
    jobs: dict[str, list[str]] = {}
    devices = set()
    for log in sorted((workdir / "logs").rglob("*.log")):
        rule = log.relative_to(workdir / "logs").parts[0]
        if rule == "slurm" or rule in LOCAL_RULES:  # sbatch's own output files; jobs run by Snakemake itself
            continue
        text = log.read_text()
        found = re.search(r"running as SLURM job (\d+) on ", text)
        assert found, f"{log} shows no SLURM job id"
        jobs.setdefault(rule, []).append(found[1])
        if rule in GPU_RULES:  # the job step's GPU, as SLURM states it, is the one CUDA will use
            gpus = re.search(r"SLURM job (\d+): using the GPUs SLURM assigned \(.*SLURM_STEP_GPUS=(\d) .*\)", text)
            assert gpus and gpus[1] == found[1], log
            assert re.search(rf"using the GPUs SLURM assigned \(.*CUDA_VISIBLE_DEVICES={gpus[2]}\)", text), log
            devices.add(gpus[2])
    assert Counter({rule: len(ids) for rule, ids in jobs.items()}) == planned  # every job ran in SLURM

    for rule, ids in jobs.items():
        for job_id in ids:
            info = scontrol_job(job_id)
            assert info["JobState"] == "COMPLETED", (rule, job_id, info["JobState"])
            tres = info.get("TresPerJob", "")
            if rule in GPU_RULES:
                assert tres == "gres:gpu:1", (rule, tres)  # submitted with --gpus=1
                assert info["Partition"] == "gpu"
            else:
                assert "gpu" not in tres and info["Partition"] == "cpu", (rule, tres)
    assert len({j for ids in jobs.values() for j in ids}) == sum(planned.values())
    return devices


def test_two_candidate_sources_fuse_through_slurm_as_the_library_fuses_them(tmp_path, dataset_block):
    """Dense and BM25 candidates, each searched in two SLURM jobs, fused in another: the fused table equals
    what the library makes of the dense table and of BM25 searched in one piece, and each negative names its
    sources. Checked against the code: catches a BM25 shard lost between the SLURM jobs (bm25_shards
    gathering the first search shard only fails it)."""
    assert slurm_is_up(), "SLURM is required here but sinfo shows no usable node"
    block = {**dataset_block, "candidate_sources": ["dense", "bm25"], "candidates": 20, "train_formats": []}
    del block["audit_qrels"]
    write_config(tmp_path, {"fx": block}, scatter={"search": 2})
    shown = slurm_run(tmp_path)
    planned = started(shown)
    assert planned["search_bm25"] == planned["search"] == 2 and planned["fuse_candidates"] == 1
    slurm_devices(tmp_path, shown)

    results = tmp_path / "results" / "fx"
    fused = pq.read_table(results / "fuse" / "candidates.parquet")
    assert fused.equals(pq.read_table(fused_in_one_piece(results, tmp_path, 20)))
    found_by = {
        (r["query_id"], r["doc_id"]): [s for s in ("dense", "bm25") if r[f"rank_{s}"]] for r in fused.to_pylist()
    }
    negatives = [
        (r.query, d, src)
        for r in read_negatives(results / "negatives.jsonl")
        for d, src in zip(r.docs[r.n_positives :], r.doc_sources[r.n_positives :], strict=True)
    ]
    assert negatives and all(src == found_by.get((q, d), []) for q, d, src in negatives)  # padding: no source
    counted = json.loads((results / "selection.json").read_text())["sources"]
    assert {s: v["negatives"] for s, v in counted.items()} == {
        s: sum(s in src for _, _, src in negatives) for s in ("dense", "bm25")
    }


def test_two_rounds_through_slurm_train_round_2_on_the_gpu_slurm_assigned(tmp_path, dataset_block):
    """Rounds work per SLURM job: round 2's training is a job of its own on the gpu partition with --gpus=1
    and the GPU SLURM assigned (the profile had no entry for train_round, so it asked the cpu partition for
    a GPU), each round's embed too, and round 2 mines with the model round 2 trained."""
    assert slurm_is_up(), "SLURM is required here but sinfo shows no usable node"
    rounds = {"rounds": 2, "finetune_negatives": 2, "finetune_batch_size": 4, "train_formats": []}
    block = {**dataset_block, **rounds}
    del block["audit_qrels"]
    write_config(tmp_path, {"fx": block})
    shown = slurm_run(tmp_path)
    planned = started(shown)
    assert planned["prepare"] == planned["train_round"] == planned["take_last_round"] == 1 and planned["embed"] == 2
    slurm_devices(tmp_path, shown)
    results = tmp_path / "results" / "fx"
    provenance = json.loads((results / "negatives.provenance.json").read_text())
    assert provenance["settings"]["round"] == 2
    assert provenance["models"]["embedding"]["path"] == str(results / "rounds" / "2" / "model")
    trained = json.loads((results / "rounds/2/negatives.provenance.json").read_text())["models"]["embedding"]
    assert trained["weights_sha256"] == provenance["models"]["embedding"]["weights_sha256"]
    assert (results / "negatives.jsonl").read_bytes() == (results / "rounds/2/negatives.jsonl").read_bytes()


def test_a_failing_slurm_job_shows_its_own_error_from_a_status_stamped_a_day_behind(tmp_path, dataset_block):
    """Catches a display that judges a status by its mtime: it turned this error into "ended without
    reporting an error"."""
    assert slurm_is_up(), "SLURM is required here but sinfo shows no usable node"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(Path(dataset_block["corpus"]).read_text() + '{"_id": "broken", "text": \n')
    write_config(tmp_path, {"fx": {**dataset_block, "corpus": str(corpus)}})
    shown = slurm_run(tmp_path, check=False)
    assert_stamped_a_day_behind(tmp_path)
    error = [line for line in shown if line.startswith("✗ prepare fx: ")]
    assert error and re.fullmatch(rf"✗ prepare fx: {corpus}:\d+: malformed JSON \(.*\)", error[0]), shown
