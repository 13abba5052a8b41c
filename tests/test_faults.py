"""Faults: a failed or killed writer leaves no file that looks complete, a killed run resumes to the same
bytes, and a run is reproducible to the byte on the CPU."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import snakemake, snakemake_cmd, write_config

from negflow.files import atomic_output


def _results(workdir: Path) -> dict[str, bytes]:
    root = workdir / "results"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_bytes(workdir: Path, reference: Path) -> None:
    got, want = _results(workdir), _results(reference)
    assert sorted(got) == sorted(want)
    differing = [name for name in want if got[name] != want[name]]
    assert differing == [], f"{len(differing)} files differ, first: {differing[:5]}"


def test_atomic_output_never_shows_a_partial_file_and_clears_a_killed_attempts_leftovers(tmp_path):
    target = tmp_path / "out" / "negatives.jsonl"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the job failed here")
    assert not target.exists() and list(target.parent.iterdir()) == []

    stale = target.with_name(".negatives.jsonl.tmp-99999")  # a killed job's temporary
    stale.mkdir()
    (stale / "part").write_text("x")
    with atomic_output(target) as tmp:
        assert not target.exists()
        tmp.write_text("complete\n")
    assert target.read_text() == "complete\n"
    assert [p.name for p in target.parent.iterdir()] == ["negatives.jsonl"]


# The files one run writes along its longest chain of jobs, in the order written. Jobs beside the chain
# (compute_qrels_cosines, audit, the other exports, plot_report) run alongside in no fixed order.
CHAIN = [
    "prepare/corpus",
    "prepare/queries",
    "prepare/qrels",
    "prepare/holdout.parquet",
    "prepare/manifest.json",
    "prepare/judgments.parquet",
    "embed/corpus/1-of-1.npy",
    "embed/queries/1-of-1.npy",
    "search/candidates/1-of-1.parquet",
    "search/candidates.parquet",
    "score/ce_pairs",
    "score/shards/1-of-1.parquet",
    "score/pair_scores.parquet",
    "negatives.jsonl",
    "train/flag.jsonl",
]
# Ten moments of one run: (rule, file, stopped). Not stopped: a job of `rule` has started (importing, loading
# its model) and `file`, its first in CHAIN, is not written yet. Stopped: the job has written `file` under
# its temporary name and stopped before the rename, the moment atomic writes are for. After each kill the
# files of CHAIN in place are exactly those before `file`: ten distinct states, each further along.
KILL_MOMENTS = [
    ("prepare", "prepare/corpus", True),  # mid-prepare, nothing in place
    ("prepare", "prepare/manifest.json", True),  # four of prepare's five outputs in place
    ("embed", "embed/corpus/1-of-1.npy", False),
    ("embed", "embed/queries/1-of-1.npy", True),  # the corpus embeddings in place
    ("search", "search/candidates/1-of-1.parquet", True),
    ("prepare_ce_pairs", "score/ce_pairs", False),
    ("score_pairs", "score/shards/1-of-1.parquet", True),
    ("merge_scores", "score/pair_scores.parquet", False),
    ("export_negatives", "negatives.jsonl", True),
    ("export_flag", "train/flag.jsonl", True),
]
# Loaded by every Python process of a run that is to stop at a file (through PYTHONPATH): the job about to
# rename that file's temporary onto it stops itself instead, so the test can kill the run right there.
PAUSE_HOOK = """
import contextlib, os, signal
import negflow.files as files
_atomic_output = files.atomic_output
@contextlib.contextmanager
def _paused(path):
    with _atomic_output(path) as tmp:
        yield tmp
        if os.path.realpath(path) == os.environ["NEGFLOW_FAULTS_PAUSE"]:
            os.kill(os.getpid(), signal.SIGSTOP)
files.atomic_output = _paused
"""
# Snakemake runs a `script:` job as `python .snakemake/scripts/tmpXXXXXXXX.<rule>.py`.
JOB_SCRIPT = re.compile(r"\.snakemake/scripts/tmp\w+\.(\w+)\.py$")


def _jobs_of(snakemake_pid: int) -> dict[str, str]:
    """The rules with a job running under Snakemake (its process tree, read through /proc's children
    lists, so polling costs little), each with its state: R, S, D, or T for stopped."""
    jobs: dict[str, str] = {}
    todo = [snakemake_pid]
    while todo:
        pid = todo.pop()
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            todo += [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
        except OSError:
            continue  # ended meanwhile
        for rule in (m.group(1) for m in map(JOB_SCRIPT.search, args) if m):
            jobs[rule] = "T" if "T" in (state, jobs.get(rule)) else state
    return jobs


def _group_alive(group: int) -> bool:
    """Whether a process of `group` is still alive (not yet a zombie)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            state, _ppid, pgrp = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == group and state != "Z":
                return True
    return False


@pytest.fixture
def own_groups():
    """The process groups a test starts, killed when it ends and when pytest gets SIGTERM (a `timeout`, CI):
    a group of its own is beyond the signal that stops pytest, and a hung run would go on."""
    groups: set[int] = set()

    def kill_groups(signum, _frame):
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        signal.signal(signum, previous)
        signal.raise_signal(signum)

    previous = signal.signal(signal.SIGTERM, kill_groups)
    try:
        yield groups
    finally:
        signal.signal(signal.SIGTERM, previous)
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def _run_until_killed(workdir: Path, groups: set[int], rule: str, pause: Path | None) -> dict[str, str]:
    """Start the workflow in a process group of its own; once a job of `rule` is running (with `pause`:
    stopped before renaming that file), SIGKILL the group, Snakemake and every job at once, and wait until
    all are gone. Returns the jobs alive at the kill, with their states."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if pause:
        hook = workdir / "pause-hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(PAUSE_HOOK)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
        env["NEGFLOW_FAULTS_PAUSE"] = os.path.realpath(pause)
    out = workdir / f"killed-at-{rule}-{pause.name if pause else 'start'}.out"
    with open(out, "w") as log:
        cmd = snakemake_cmd(workdir, "--rerun-incomplete")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    groups.add(proc.pid)
    try:
        deadline = time.monotonic() + 900  # a guard against a hang only: the wait is for the job's state
        while not ((state := (jobs := _jobs_of(proc.pid)).get(rule)) and (state == "T" or not pause)):
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) first: {out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {rule} job {'stopped at ' + pause.name if pause else 'started'}"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        while _group_alive(proc.pid):
            time.sleep(0.01)
        groups.discard(proc.pid)
    return jobs


@pytest.mark.slow
def test_killed_at_ten_moments_then_rerun_incomplete_ends_byte_identical(
    tmp_path, dataset_block, tiny_models, local_ce_run, own_groups
):
    """One run, killed with SIGKILL (Snakemake and its jobs) at the ten KILL_MOMENTS in turn, each placed by
    the run's state and checked after the kill (which files were in place, the stopped job's temporary),
    each time restarted with `--unlock` and `--rerun-incomplete` the way a user would; after the last restart
    completes, every file under results/ equals an uninterrupted run's, byte for byte. Catches, where the
    test before it (kills at a delay after a log line, place unchecked) passed: atomic_output writing straight
    to the final name, found in place at the first stopped moment."""
    write_config(tmp_path, {"fx": {**dataset_block, "ce": str(tiny_models["ce"])}})
    results = tmp_path / "results/fx"
    for rule, name, stopped in KILL_MOMENTS:
        jobs = _run_until_killed(tmp_path, own_groups, rule, results / name if stopped else None)
        in_place = [n for n in CHAIN if (results / n).exists()]
        moment = f"{rule} {'stopped before renaming' if stopped else 'started, before writing'} {name}"
        assert in_place == CHAIN[: CHAIN.index(name)], f"{moment}: in place {in_place} (jobs alive: {jobs})"
        temporaries = list((results / name).parent.glob(f".{Path(name).name}.tmp-*"))
        assert len(temporaries) == stopped, f"{moment}: temporaries {temporaries}"
        snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "--rerun-incomplete")
    assert_same_bytes(tmp_path, local_ce_run)
