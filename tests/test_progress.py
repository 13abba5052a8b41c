"""What a job reports beside its log: its bars' state while it runs (at most every INTERVAL seconds), then its
counts or its one-line error, which `stage.run_stage` writes whatever the stage does."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

from negflow import progress


@pytest.fixture
def log(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    path = str(tmp_path / "job.log")
    progress.report_to(path)
    yield path
    progress.report_to(None)


def test_a_bar_reports_rows_done_of_total_while_it_runs_and_when_it_closes(log):
    assert progress.read_status(log) == {"state": "running"}
    with (
        open(os.devnull, "w") as devnull,
        progress.ProgressBar(total=10, desc="embed", unit=" rows", file=devnull) as bar,
    ):
        bar.update(3)
        status = progress.read_status(log)
        assert (status["desc"], status["n"], status["total"], status["unit"]) == ("embed", 3, 10, "rows")
        bar.update(7)
    assert progress.read_status(log)["n"] == 10


def test_status_writes_are_rate_limited_and_the_close_writes_the_last_state(log, monkeypatch):
    monkeypatch.setattr(progress, "INTERVAL", 3600.0)
    with open(os.devnull, "w") as devnull, progress.ProgressBar(total=100, file=devnull) as bar:
        for _ in range(100):
            bar.update()
        assert progress.read_status(log)["n"] == 1  # the first update wrote; the next hour's did not
    assert progress.read_status(log)["n"] == 100


def test_without_a_log_a_bar_writes_no_status(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    progress.report_to(None)
    with open(os.devnull, "w") as devnull, progress.ProgressBar(total=3, file=devnull) as bar:
        bar.update(3)
    progress.finished({"documents": 3})
    assert list(tmp_path.iterdir()) == []


def test_the_end_is_the_last_word_and_a_bar_never_fails_the_job(log, tmp_path):
    """A bar that closes after the stage failed (freed as the process exits) leaves the error in place; a
    disabled bar, a status that cannot be written and counts that are not a dict fail nothing."""
    with open(os.devnull, "w") as devnull:
        bar = progress.ProgressBar(total=10, desc="reading", file=devnull)
        bar.update(4)
        progress.failed("pairs.jsonl:5: malformed JSON")
        bar.close()
        assert progress.read_status(log) == {"state": "failed", "error": "pairs.jsonl:5: malformed JSON"}
        progress.report_to(str(tmp_path / "gone" / "job.log"))  # a folder that does not exist
        with progress.ProgressBar(total=3, file=devnull, disable=True) as off, progress.ProgressBar(file=devnull) as on:
            off.update(3)
            on.update(3)
        progress.finished(7)
        with pytest.raises(TypeError, match="counts with update"):
            list(progress.ProgressBar(range(3), file=devnull))
    progress.report_to(log)
    progress.finished({"documents": __import__("numpy").int64(5), "queries": True, "note": 3})
    assert progress.read_status(log) == {"state": "done", "counts": {"documents": 5}}


@pytest.mark.slow  # child processes
def test_run_stage_ends_the_status_with_counts_or_the_one_line_error(tmp_path):
    """In a process of its own, as a rule's script runs: run_stage takes over stderr."""
    script = (
        "import sys; sys.path.insert(0, 'scripts')\n"
        "from negflow.errors import InputError\n"
        "from negflow.stage import run_stage\n"
        "def ok(log): return {'documents': 5, 'queries': 2, 'short': 1, 'note': 'x'}\n"
        "def bad(log): raise InputError('corpus.jsonl:3: malformed JSON')\n"
        "def crash(log): raise ValueError('shapes differ\\nsecond line')\n"
        "run_stage(sys.argv[2], {'ok': ok, 'bad': bad, 'crash': crash}[sys.argv[1]])\n"
    )
    results = {}
    for case, display in (("ok", ""), ("bad", ""), ("bad", "1"), ("crash", "")):
        log = str(tmp_path / f"{case}{display}.log")
        env = {**os.environ, progress.DISPLAY_ENV: display}
        run = subprocess.run(
            [sys.executable, "-c", script, case, log], cwd=REPO, capture_output=True, text=True, env=env
        )
        results[case + display] = (run.returncode, run.stderr, progress.read_status(log))
    assert results["ok"][0] == 0 and results["ok"][2] == {"state": "done", "counts": {"documents": 5, "queries": 2}}
    code, stderr, status = results["bad"]
    assert code == 1 and status == {"state": "failed", "error": "corpus.jsonl:3: malformed JSON"}
    assert "negflow error: corpus.jsonl:3: malformed JSON" in stderr
    assert results["bad1"][0] == 1 and "negflow error" not in results["bad1"][1]  # the display shows it instead
    code, _, status = results["crash"]
    assert code == 1 and status == {"state": "failed", "error": "ValueError: shapes differ"}
