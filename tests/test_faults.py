"""Faults: a failed or killed writer leaves no file that looks complete, a killed run resumes to the same
bytes, and a run is reproducible to the byte on the CPU."""

from __future__ import annotations

import contextlib
import os
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


@pytest.mark.slow
def test_two_runs_with_the_same_config_are_byte_identical(tmp_path, dataset_block, tiny_models, local_ce_run):
    write_config(tmp_path, {"fx": {**dataset_block, "ce": str(tiny_models["ce"])}})
    snakemake(tmp_path)
    assert_same_bytes(tmp_path, local_ce_run)


# Ten moments of one run, each a job just started (its log opened) plus a delay: mid-prepare, mid-embed,
# and every later stage, cross-encoder scoring included. The jobs reading negatives.jsonl run side by side
# in no fixed order, so those moments wait for any of them; with --cores 2 a kill often hits two jobs.
AFTER_EXPORT = ("export_flag", "export_sentence_transformers", "plot_report")
KILL_MOMENTS = [
    (("prepare",), 0.0),
    (("prepare",), 1.5),
    (("embed",), 0.0),
    (("embed",), 1.0),
    (("search",), 0.0),
    (("prepare_ce_pairs",), 0.0),
    (("score_pairs",), 0.3),
    (("export_negatives",), 0.0),
    (AFTER_EXPORT, 0.0),
    (AFTER_EXPORT, 0.3),
]


def _started(workdir: Path, rules: tuple[str, ...], since: float) -> bool:
    logs = [p for rule in rules if (workdir / "logs" / rule).is_dir() for p in (workdir / "logs" / rule).glob("*.log")]
    return any(p.stat().st_mtime > since for p in logs)


def _run_until_killed(workdir: Path, rules: tuple[str, ...], delay: float) -> None:
    """Start the workflow in its own process group; SIGKILL the group (Snakemake and every job) `delay`
    seconds after a job of one of `rules` opened its log."""
    start = time.time()
    log = open(workdir / f"killed-at-{rules[0]}-{delay}.out", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        snakemake_cmd(workdir, "--rerun-incomplete"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = start + 900  # only a guard against a hang: the wait itself is for the log file
        while not _started(workdir, rules, start):
            assert proc.poll() is None, f"the run ended before {rules} started (exit {proc.returncode})"
            assert time.time() < deadline, f"{rules} never started"
            time.sleep(0.02)
        time.sleep(delay)
        assert proc.poll() is None, f"the run ended within {delay} s of {rules} starting"
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone when the run ended by itself
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


@pytest.mark.slow
def test_killed_at_ten_moments_then_rerun_incomplete_ends_byte_identical(
    tmp_path, dataset_block, tiny_models, local_ce_run
):
    """One run, killed with SIGKILL (Snakemake and its jobs) at ten moments in turn, each time restarted
    with `--unlock` and `--rerun-incomplete` the way a user would; after the last restart completes, every
    file under results/ equals an uninterrupted run's, byte for byte."""
    write_config(tmp_path, {"fx": {**dataset_block, "ce": str(tiny_models["ce"])}})
    for rules, delay in KILL_MOMENTS:
        _run_until_killed(tmp_path, rules, delay)
        negatives = tmp_path / "results/fx/negatives.jsonl"
        if negatives.exists():  # whatever is there under a final name is complete
            assert negatives.read_bytes().endswith(b"\n")
        snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "--rerun-incomplete")
    assert (tmp_path / "results/fx/negatives.jsonl").read_bytes() == (
        local_ce_run / "results/fx/negatives.jsonl"
    ).read_bytes()
    assert_same_bytes(tmp_path, local_ce_run)
