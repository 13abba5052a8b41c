"""What `negflow mine` shows while it runs: a line per job as it starts and ends with its counts, live bars on
a terminal, plain lines without control codes elsewhere, and a failing job's one-line error with its log;
first the display fed by hand and through the logger plugin, then the command under a pseudo-terminal and
through a pipe."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from types import SimpleNamespace

import pytest
from conftest import read_jsonl
from rich.console import Console

from negflow import display, progress
from negflow.display import RunDisplay

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain_display() -> tuple[RunDisplay, io.StringIO]:
    out = io.StringIO()
    return RunDisplay(Console(file=out, force_terminal=False, width=100)), out


def write_status(log, **status) -> None:
    with open(progress.status_path(str(log)), "w", encoding="utf-8") as f:
        json.dump(status, f)


def test_a_job_shows_a_line_as_it_starts_and_one_with_its_counts_as_it_ends(tmp_path):
    shown, out = plain_display()
    log = tmp_path / "embed.log"
    shown.job_started(3, "embed", {"dataset": "fx", "scatteritem": "1-of-2"}, str(log))
    write_status(log, state="done", counts={"documents": 1640, "queries": 185})
    shown.job_finished(3)
    shown.job_started(4, "all", {}, None)  # the target rule does no work: not shown
    shown.job_finished(4)
    shown.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "▶ embed fx 1-of-2"
    assert re.fullmatch(r"✓ embed fx 1-of-2 \(\d+\.\d s\): 1,640 documents, 185 queries", lines[1])
    assert len(lines) == 2 and "\x1b" not in out.getvalue()


def test_off_a_terminal_a_running_job_prints_its_progress_at_a_modest_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(display, "POLL", 0.01)
    monkeypatch.setattr(display, "PLAIN_INTERVAL", 0.0)
    shown, out = plain_display()
    log = tmp_path / "search.log"
    write_status(log, state="running", desc="search", n=4500, total=10000, unit="queries", elapsed=10.0)
    shown.job_started(1, "search", {"dataset": "fx", "scatteritem": "1-of-1"}, str(log))
    deadline = time.monotonic() + 5
    while "4,500" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # more polls of an unchanged status print nothing more
    shown.close()
    progress_lines = [line for line in out.getvalue().splitlines() if "4,500" in line]
    assert progress_lines == ["  search fx 1-of-1: 4,500/10,000 queries (45%), 450 queries/s, 12 s left"]


def test_a_failing_job_shows_its_one_line_error_and_its_log(tmp_path):
    shown, out = plain_display()
    known, crashed = tmp_path / "prepare.log", tmp_path / "search.log"
    write_status(known, state="failed", error="corpus.jsonl:2: malformed JSON (Expecting value at column 1)")
    crashed.write_text("Traceback (most recent call last):\n  ...\nMemoryError: out of memory\n")
    shown.job_started(1, "prepare", {"dataset": "fx"}, str(known))
    shown.job_failed(1, "prepare", str(known))
    shown.job_failed(2, "search", str(crashed))  # failed before its start was shown, without a status
    shown.error('RuleException:\nCalledProcessError in file "rules/prepare.smk", line 21:\nCommand ...')
    shown.error("WorkflowError:\nAt least one job did not complete successfully.")
    shown.error('WorkflowError in file "rules/common.smk", line 25:\nconfig: datasets.fx.candidates: too few\n')
    shown.close()
    assert out.getvalue().splitlines()[1:] == [
        "✗ prepare fx: corpus.jsonl:2: malformed JSON (Expecting value at column 1)",
        f"  log: {known}",
        "✗ search: ended without reporting an error (MemoryError: out of memory)",
        f"  log: {crashed}",
        "✗ config: datasets.fx.candidates: too few",
    ]


def test_a_status_left_by_an_earlier_run_of_the_job_is_not_its_own(tmp_path):
    shown, out = plain_display()
    log = tmp_path / "prepare.log"
    write_status(log, state="failed", error="corpus.jsonl:2: malformed JSON")  # the run before this one
    old = time.time() - 60
    os.utime(progress.status_path(str(log)), (old, old))
    log.write_text("Traceback (most recent call last):\nModuleNotFoundError: No module named 'negflow'\n")
    shown.job_started(1, "prepare", {"dataset": "fx"}, str(log))
    shown.job_failed(1, "prepare", str(log), "died with <Signals.SIGKILL: 9>")
    shown.close()
    assert out.getvalue().splitlines()[1] == (
        "✗ prepare fx: ended without reporting an error (died with <Signals.SIGKILL: 9>; "
        "ModuleNotFoundError: No module named 'negflow')"
    )


def test_the_logger_plugin_turns_snakemake_job_events_into_the_display(tmp_path, capsys):
    from snakemake_interface_logger_plugins.common import LogEvent
    from snakemake_logger_plugin_negflow import LogHandler

    settings = SimpleNamespace(dryrun=False, stdout=False)
    handler = LogHandler(settings, None)
    log = tmp_path / "merge_candidates.log"
    write_status(log, state="done", counts={"candidates": 1600})

    def record(message, level=logging.INFO, **extra):
        entry = logging.LogRecord("snakemake", level, "", 0, message, None, None)
        entry.__dict__.update(extra)
        handler.emit(entry)

    record("Building DAG of jobs...")
    record("Execute 1 jobs...", event=LogEvent.JOB_STARTED, jobs=[7])
    info = dict(jobid=7, rule_name="merge_candidates", wildcards={"dataset": "fx"}, log=[str(log)])
    record(" Rule: merge_candidates, Jobid: 7", event=LogEvent.JOB_INFO, **info)
    record("Shell command: None", event=LogEvent.SHELLCMD)
    record("Finished jobid: 7", event=LogEvent.JOB_FINISHED, job_id=7)
    record("Nothing to be done (all requested files are present and up to date).")
    handler.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "▶ merge_candidates fx"
    assert re.fullmatch(r"✓ merge_candidates fx \(\d+\.\d s\): 1,600 candidates", lines[1])
    assert lines[2:] == ["nothing to do: every requested file is up to date"]


def run_in_terminal(command: list[str], env: dict, rows: int = 60, columns: int = 300) -> tuple[int, bytes]:
    """Run a command on a pseudo-terminal of that size; everything it wrote there, and its exit status."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    run = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed with the last process on it
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return run.wait(), b"".join(chunks)


def screen_of(output: bytes, rows: int = 400, columns: int = 300) -> list[str]:
    """The lines a terminal shows after `output` (a tall screen, so nothing scrolls away)."""
    import pyte

    screen = pyte.Screen(columns, rows)
    pyte.ByteStream(screen).feed(output.replace(b"\n", b"\r\n"))
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


@pytest.fixture(scope="module")
def mine_command(fixture_data, tiny_models):
    """`negflow mine` on the fixture data with the tiny model, embedding in batches of 2 so the embed job
    runs long enough to be watched; the display and the jobs report every 10 ms."""

    def command(out, corpus=None):
        data = ["--corpus", str(corpus or fixture_data["corpus"])]
        data += ["--queries", str(fixture_data["queries"]), "--qrels", str(fixture_data["qrels"])]
        settings = ["--embedding-dtype", "fp32", "--relative-margin", "0", "--positive-doc-margin", "null"]
        settings += ["--dup-threshold", "null", "--num-negatives", "2", "--embedding-batch-size", "2"]
        cli = [sys.executable, "-m", "negflow.cli", "mine", *data, "--model", str(tiny_models["embedder"])]
        return [*cli, "--name", "fx", "--out", str(out), "--cores", "2", *settings]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "xterm-256color", "NEGFLOW_PROGRESS_INTERVAL": "0"}
    env |= {"NEGFLOW_DISPLAY_POLL": "0.01", "NEGFLOW_PLAIN_INTERVAL": "0"}
    return command, env


@pytest.mark.slow
def test_on_a_terminal_a_run_is_a_few_dozen_lines_with_live_bars_and_the_summary_last(tmp_path, mine_command):
    command, env = mine_command
    status, output = run_in_terminal(command(tmp_path / "run"), env)
    lines = screen_of(output)
    assert status == 0, "\n".join(lines)
    assert len(lines) <= 40 and not [line for line in lines if "Shell command" in line or "input:" in line]
    assert lines[-1].startswith("fx: ") and "negatives" in lines[-1] and lines[-1].endswith("negatives.jsonl")
    assert any(re.fullmatch(r"✓ embed fx 1-of-1 \(\d+\.\d s\): 120 documents, 16 queries", line) for line in lines), (
        lines
    )
    frames = [line for chunk in ANSI.sub("", output.decode()).split("\r") for line in chunk.split("\n")]
    bars = [line for line in frames if re.search(r"^\s+embed fx 1-of-1 .*━.* \d+/120 rows", line)]
    assert bars, "no frame of the embed job's bar"  # drawn in place while the job ran
    assert b"\x1b[" in output


@pytest.mark.slow
def test_piped_a_run_prints_plain_lines_and_a_failing_job_its_error_and_log(tmp_path, mine_command, fixture_data):
    command, env = mine_command
    piped = dict(env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # as `| less` after 2>&1
    run = subprocess.run(command(tmp_path / "piped"), **piped)
    assert run.returncode == 0, run.stdout
    assert "\x1b" not in run.stdout
    lines = run.stdout.splitlines()
    assert "▶ embed fx 1-of-1" in lines and lines[-1].startswith("fx: ")
    assert any(re.fullmatch(r"  embed fx 1-of-1: \d+/120 rows \(\d+%\), .*", line) for line in lines)

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(fixture_data["corpus"].read_text() + '{"_id": "broken", "text": \n')
    bad = subprocess.run(command(tmp_path / "bad", corpus), **piped)
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()
    line_no = len(read_jsonl(fixture_data["corpus"])) + 1
    failed = lines.index(f"✗ prepare fx: {corpus}:{line_no}: malformed JSON (Expecting value at column 1)")
    assert lines[failed + 1] == f"  log: {tmp_path / 'bad/logs/prepare/fx.log'}"
    assert "Traceback" not in bad.stdout and "negflow error" not in bad.stdout and len(lines) < 12
