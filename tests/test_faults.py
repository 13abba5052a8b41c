"""Faults: a failed or killed writer leaves no file that looks complete, a killed run resumes to the same
bytes, and a run is reproducible to the byte on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import snakemake, write_config
from kills import run_until_killed

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


def _run_until_killed(workdir: Path, groups: set[int], rule: str, pause: Path | None) -> dict[str, str]:
    """kills.run_until_killed with `--rerun-incomplete`; with `pause`, once the job of `rule` has stopped
    before renaming that file."""
    env = {"NEGFLOW_FAULTS_PAUSE": os.path.realpath(pause)} if pause else {}
    return run_until_killed(workdir, groups, rule, ("--rerun-incomplete",), PAUSE_HOOK if pause else None, env)


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
