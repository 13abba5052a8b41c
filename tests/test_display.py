"""What `negflow mine` shows while it runs: a line per job as it starts and ends with its counts, live bars on
a terminal, plain lines without control codes elsewhere, and a failing job's one-line error with its log;
first the display fed by hand (the job events, and the status files the tests write, each read a refresh()
call: no test waits for a clock) and through the logger plugin, then the command under a pseudo-terminal
and through a pipe."""

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
RUN = "run-token-of-this-run"


@pytest.fixture(autouse=True)
def no_poller(monkeypatch):
    """The tests read the status files by calling refresh(): the display's own thread never polls."""
    monkeypatch.setattr(display, "POLL", 3600.0)


def plain_display() -> tuple[RunDisplay, io.StringIO]:
    out = io.StringIO()
    return RunDisplay(Console(file=out, force_terminal=False, width=100), RUN), out


def write_status(log, run=RUN, mtime=None, **status) -> None:
    """A job's status as a job of run `run` writes it; `mtime`: as a clock that far off would stamp it."""
    path = progress.status_path(str(log))
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**status, "run": run}, f)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def frames(output: str) -> list[str]:
    """Every line a terminal was shown, each redraw of the bars included, without control codes."""
    return [line for chunk in ANSI.sub("", output).split("\r") for line in chunk.split("\n")]


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


def test_off_a_terminal_a_running_job_prints_its_progress_as_it_changes_at_a_modest_rate(tmp_path, monkeypatch):
    """Each read of the status file is a refresh() call: catches a display that prints a changed status
    within PLAIN_INTERVAL of its last line (the interval check removed), which the sleep-based test, run at
    PLAIN_INTERVAL 0, did not."""
    monkeypatch.setattr(display, "PLAIN_INTERVAL", 3600.0)
    shown, out = plain_display()
    log = tmp_path / "search.log"
    shown.job_started(1, "search", {"dataset": "fx", "scatteritem": "1-of-1"}, str(log))
    shown.refresh()  # no status yet
    write_status(log, state="running", desc="search", n=4500, total=10000, unit="queries", elapsed=10.0)
    shown.refresh()  # the first progress: shown at once
    shown.refresh()  # unchanged: nothing more
    write_status(log, state="running", desc="search", n=5000, total=10000, unit="queries", elapsed=11.0)
    shown.refresh()  # changed, but within the interval of the last line
    write_status(log, state="running", desc="search", n=5500, total=10000, unit="queries", elapsed=12.0)
    monkeypatch.setattr(display, "PLAIN_INTERVAL", 0.0)
    shown.refresh()  # the interval is over
    shown.refresh()  # unchanged
    shown.close()
    assert out.getvalue().splitlines()[1:] == [
        "  search fx 1-of-1: 4,500/10,000 queries (45%), 450 queries/s, 12 s left",
        "  search fx 1-of-1: 5,500/10,000 queries (55%), 458 queries/s, 10 s left",
    ]


def test_on_a_terminal_a_job_bar_is_drawn_as_it_starts_and_redrawn_from_each_status_read(tmp_path):
    """The frames come from the display's events alone (rich's own timer is off): catches a bar that keeps
    the job's name instead of the status's description (prepare's `corpus`), which the end-to-end run,
    whose embed bar describes itself by the job's name, did not."""
    out = io.StringIO()
    shown = RunDisplay(Console(file=out, force_terminal=True, force_interactive=True, width=120), RUN)
    log = tmp_path / "prepare.log"
    shown.job_started(1, "prepare", {"dataset": "fx"}, str(log))
    assert [line for line in frames(out.getvalue()) if re.fullmatch(r"\s+prepare fx +━+\s*", line)]
    write_status(log, state="running", desc="corpus", n=600, total=1640, unit="documents", elapsed=2.0)
    shown.refresh()
    bars = [line for line in frames(out.getvalue()) if "600/1,640" in line]
    assert bars and re.match(r"\s+prepare fx: corpus ━+\S* +600/1,640 documents ", bars[-1]), bars
    write_status(log, state="done", counts={"documents": 1640})
    shown.job_finished(1)
    shown.close()
    assert re.search(r"✓ prepare fx \(\d+\.\d s\): 1,640 documents", ANSI.sub("", out.getvalue()))


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


@pytest.mark.parametrize("skew", [-86400.0, 86400.0], ids=["a-day-behind", "a-day-ahead"])
def test_a_status_stamped_by_a_skewed_clock_still_shows_progress_counts_and_error(tmp_path, skew):
    """A compute node's (or file server's) clock a day off stamps the status files: catches a display that
    judges a status by its mtime (the window after time.time() - 1.0 it had), which hid these counts and
    turned the real error into "ended without reporting an error"."""
    shown, out = plain_display()
    done, failed = tmp_path / "embed.log", tmp_path / "prepare.log"
    stamp = time.time() + skew
    shown.job_started(1, "embed", {"dataset": "fx", "scatteritem": "1-of-1"}, str(done))
    shown.job_started(2, "prepare", {"dataset": "fy"}, str(failed))
    write_status(done, mtime=stamp, state="running", desc="embed", n=60, total=120, unit="rows", elapsed=2.0)
    shown.refresh()
    write_status(done, mtime=stamp, state="done", counts={"documents": 120, "queries": 16})
    write_status(failed, mtime=stamp, state="failed", error="corpus.jsonl:2: malformed JSON")
    shown.job_finished(1)
    shown.job_failed(2, "prepare", str(failed), "exit status 1")
    shown.close()
    lines = out.getvalue().splitlines()
    assert lines[2] == "  embed fx 1-of-1: 60/120 rows (50%), 30 rows/s, 2 s left"
    assert re.fullmatch(r"✓ embed fx 1-of-1 \(\d+\.\d s\): 120 documents, 16 queries", lines[3])
    assert lines[4:] == ["✗ prepare fy: corpus.jsonl:2: malformed JSON", f"  log: {failed}"]


def test_a_status_another_run_wrote_is_not_this_runs_however_fresh(tmp_path):
    """The run before this one left a failed status, stamped now and a minute ahead: catches a display that
    takes a status without its run token (a fresh one was taken as this run's when stamped within a second
    of the job's start, one a minute ahead always)."""
    shown, out = plain_display()
    log = tmp_path / "prepare.log"
    write_status(log, run="run-token-of-the-run-before", state="failed", error="corpus.jsonl:2: malformed JSON")
    log.write_text("Traceback (most recent call last):\nModuleNotFoundError: No module named 'negflow'\n")
    shown.job_started(1, "prepare", {"dataset": "fx"}, str(log))
    shown.refresh()
    shown.job_failed(1, "prepare", str(log), "died with <Signals.SIGKILL: 9>")
    write_status(log, run="run-token-of-the-run-before", mtime=time.time() + 60, state="done", counts={"rows": 5})
    shown.job_started(2, "prepare", {"dataset": "fx"}, str(log))
    shown.job_finished(2)
    shown.close()
    lines = out.getvalue().splitlines()
    assert lines[1] == (
        "✗ prepare fx: ended without reporting an error (died with <Signals.SIGKILL: 9>; "
        "ModuleNotFoundError: No module named 'negflow')"
    )
    assert re.fullmatch(r"✓ prepare fx \(\d+\.\d s\)", lines[4]) and len(lines) == 5


def test_the_logger_plugin_turns_snakemake_job_events_into_the_display(tmp_path, capsys, monkeypatch):
    """The plugin hands its jobs, through the environment they inherit, the token its display accepts, and
    a job's status (written as a job writes it) carries it: catches statuses written without the token."""
    from snakemake_interface_logger_plugins.common import LogEvent
    from snakemake_logger_plugin_negflow import LogHandler

    for name in (progress.DISPLAY_ENV, progress.RUN_ENV):  # restored after the test: the plugin sets them
        monkeypatch.setenv(name, "")
    settings = SimpleNamespace(dryrun=False, stdout=False)
    handler = LogHandler(settings, None)
    log = tmp_path / "merge_candidates.log"
    assert len(os.environ[progress.RUN_ENV]) == 32 and os.environ[progress.DISPLAY_ENV] == "1"
    progress.report_to(str(log))  # as stage.run_stage does in a job
    progress.finished({"candidates": 1600})
    progress.report_to(None)

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
    """`negflow mine` on the fixture data with the tiny model. What the run shows while a job runs depends
    on how long the job lasts; the tests above feed those status reads by hand, these check what every run
    shows whatever the timing."""

    def command(out, corpus=None):
        data = ["--corpus", str(corpus or fixture_data["corpus"])]
        data += ["--queries", str(fixture_data["queries"]), "--qrels", str(fixture_data["qrels"])]
        settings = ["--embedding-dtype", "fp32", "--relative-margin", "0", "--positive-doc-margin", "null"]
        settings += ["--dup-threshold", "null", "--num-negatives", "2"]
        cli = [sys.executable, "-m", "negflow.cli", "mine", *data, "--model", str(tiny_models["embedder"])]
        return [*cli, "--name", "fx", "--out", str(out), "--cores", "2", *settings]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "xterm-256color"}
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
    bars = [line for line in frames(output.decode()) if re.fullmatch(r"\s+embed fx 1-of-1 +━+\s*", line)]
    assert bars, "no frame of the embed job's bar"  # drawn in place as the job started
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
    assert any(re.fullmatch(r"✓ embed fx 1-of-1 \(\d+\.\d s\): 120 documents, 16 queries", line) for line in lines)

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(fixture_data["corpus"].read_text() + '{"_id": "broken", "text": \n')
    bad = subprocess.run(command(tmp_path / "bad", corpus), **piped)
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()
    line_no = len(read_jsonl(fixture_data["corpus"])) + 1
    failed = lines.index(f"✗ prepare fx: {corpus}:{line_no}: malformed JSON (Expecting value at column 1)")
    assert lines[failed + 1] == f"  log: {tmp_path / 'bad/logs/prepare/fx.log'}"
    assert "Traceback" not in bad.stdout and "negflow error" not in bad.stdout and len(lines) < 12
