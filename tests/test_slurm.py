"""The end-to-end fixture run through a real SLURM with profiles/slurm: every rule a SLURM job, GPU rules
submitted with --gpus and running on the GPU SLURM assigned, the result equal to the local run's.

CI starts a single-node SLURM with two fake GPUs (.ci/slurm.sh start) and sets NEGFLOW_REQUIRE_SLURM=1,
so there a missing SLURM fails instead of skipping."""

import os
import re
import shutil
import subprocess

import pytest
from conftest import REPO, assert_same_negatives, snakemake, write_config


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

GPU_RULES = {"embed", "score_pairs", "audit"}


def scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def test_fixture_run_through_slurm_equals_the_local_run(tmp_path, dataset_block, tiny_models, local_ce_run):
    assert slurm_is_up(), "SLURM is required here but sinfo shows no usable node"
    write_config(tmp_path, {"fx": {**dataset_block, "ce": str(tiny_models["ce"])}}, scatter={"embed": 2})
    proc = snakemake(
        tmp_path,
        "--workflow-profile",
        str(REPO / "profiles" / "slurm"),
        # faster polling than the profile's (timing only; still well within MinJobAge/3)
        "--slurm-init-seconds-before-status-checks=2",
        "--seconds-between-status-checks=2",
        timeout=1200,
    )
    planned = {
        name: int(n)
        for name, n in re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, re.M)
        if name not in ("all", "total")
    }
    assert planned["embed"] == 2 and planned["score_pairs"] == 1  # corpus and queries shard together

    jobs: dict[str, list[str]] = {}
    devices = set()
    for log in sorted((tmp_path / "logs").rglob("*.log")):
        rule = log.relative_to(tmp_path / "logs").parts[0]
        if rule == "slurm":  # sbatch's own output files
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
    assert {rule: len(ids) for rule, ids in jobs.items()} == planned  # every job of every rule ran in SLURM
    assert devices == {"0", "1"}  # GPU jobs ran side by side on both of the node's GPUs

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
    assert_same_negatives(tmp_path / "results/fx/negatives.jsonl", local_ce_run / "results/fx/negatives.jsonl")
