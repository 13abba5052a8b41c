"""What `negflow mine` shows while the workflow runs, fed by Snakemake's job events (the logger plugin
`snakemake_logger_plugin_negflow`): a line as each job starts and as it ends (rule, dataset, shard,
seconds, the counts its stage returned), a live bar for each running job read from the job's status file
(`progress`), and a failing job's one-line error with the path of its log. A status counts only if it
carries this run's token (`RunDisplay.run`), never by its mtime: a compute node's clock may be off.

rich draws it: on an interactive terminal the bars redraw in place under the lines, as a job starts or ends
and as its status file is read; anywhere else (a pipe, CI, a notebook, a dumb terminal) rich writes no
control codes and the display prints plain lines, a running job's progress at most every PLAIN_INTERVAL
seconds."""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from negflow.progress import read_status

POLL = float(os.environ.get("NEGFLOW_DISPLAY_POLL", "0.2"))  # seconds between reads of the status files
PLAIN_INTERVAL = float(os.environ.get("NEGFLOW_PLAIN_INTERVAL", "30"))  # a running job's line, off a terminal
SHOWN_WILDCARDS = ("dataset", "scatteritem", "format")
# Snakemake's words for what the display has said already (a job's failure) or that say nothing to act on
RESTATED = ("Exiting because a job execution failed", "At least one job did not complete", "Complete log(s)")


@dataclass
class Job:
    name: str  # rule, dataset, shard
    log: str | None  # absolute: the user's folder need not be the run's
    started: float  # time.monotonic(), for its seconds
    task: int | None = None
    shown: float = float("-inf")  # when its progress was last printed as a plain line (time.monotonic())
    seen: int = -1  # the rows done it last showed


def job_name(rule: str, wildcards: dict) -> str:
    return " ".join([rule, *(str(wildcards[key]) for key in SHOWN_WILDCARDS if key in wildcards)])


def counts_text(counts: dict) -> str:
    return ", ".join(f"{n:,} {name}" for name, n in counts.items())


def bar_name(job: Job, desc) -> str:
    """The job's name, and the bar's own description where it adds words (prepare's corpus and queries)."""
    words = str(desc or "").split()
    return job.name if set(words) <= set(job.name.split()) else f"{job.name}: {' '.join(words)}"


def last_line(path: str | None) -> str:
    """The last non-empty line of a log (an unexpected failure's exception), or nothing."""
    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except (OSError, TypeError):
        return ""
    return lines[-1].rsplit("\r", 1)[-1].strip() if lines else ""


def workflow_error(message: str) -> str | None:
    """What a Snakemake error says without its location preamble and traceback frames; None for a job's
    failure (the display shows the job's own error) and for what says nothing to act on."""
    if "CalledProcessError" in message:  # a job's script failed: job_failed says why
        return None
    lines = [line.rstrip() for line in message.strip().splitlines() if line.strip()]
    lines = [line for line in lines if not line.lstrip().startswith('File "')]
    if not lines or any(line.startswith(RESTATED) for line in lines[:2]):
        return None
    if len(lines) > 1 and re.match(r"^\w+ in (file|rule) .*:$", lines[0]):
        lines = lines[1:]
    return "\n  ".join(lines[:8])


class RowsColumn(ProgressColumn):
    """Rows done of total and their rate, in the unit the job's bar counts."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit") or "rows"
        if not task.completed and task.total is None:
            return Text("")
        done = f"{task.completed:,.0f}/{task.total:,.0f}" if task.total else f"{task.completed:,.0f}"
        rate = f", {task.speed:,.0f} {unit}/s" if task.speed else ""
        return Text(f"{done} {unit}{rate}")


class RunDisplay:
    """Job events in, lines and bars out. Snakemake's logging thread calls the event methods, a thread of
    the display's own reads the running jobs' status files (`refresh`); one lock orders them. `run`: the
    token this run's jobs write into their statuses (progress.RUN_ENV)."""

    def __init__(self, console: Console, run: str):
        self.console = console
        self.run = run
        self.live = console.is_interactive
        self.jobs: dict[int, Job] = {}
        self.lock = threading.Lock()
        self.bars: Progress | None = None
        self.stopped = threading.Event()
        self.poller = threading.Thread(target=self._poll, name="negflow-display", daemon=True)
        self.poller.start()

    def say(self, text: str) -> None:
        (self.bars.console if self.bars else self.console).print(text, markup=False, highlight=False, soft_wrap=True)

    def job_started(self, jobid: int, rule: str, wildcards: dict, log: str | None) -> None:
        if log is None:  # a target rule (all): no work of its own
            return
        with self.lock:
            job = Job(job_name(rule, wildcards), os.path.abspath(log), time.monotonic())
            self.jobs[jobid] = job
            if self.live:
                if self.bars is None:
                    self.bars = self._progress()
                    self.bars.start()
                job.task = self.bars.add_task(job.name, total=None, unit="")
                self.bars.refresh()  # the bars as they are now, which each line printed redraws below it
            self.say(f"▶ {job.name}")

    def job_finished(self, jobid: int) -> None:
        with self.lock:
            job = self._end(jobid)
            if job is None:
                return
            counts = (read_status(job.log, self.run) or {}).get("counts") or {}
            done = f"✓ {job.name} ({time.monotonic() - job.started:.1f} s)"
            self.say(f"{done}: {counts_text(counts)}" if counts else done)

    def job_failed(self, jobid: int, rule: str, log: str | None, reason: str | None = None) -> None:
        """A failed job: the error its stage reported, else (it never reported one: killed, out of memory,
        failed before its stage ran) the executor's reason and the last line of its log."""
        with self.lock:
            log = os.path.abspath(log) if log else None
            job = self._end(jobid) or Job(rule, log, time.monotonic())
            status = read_status(job.log, self.run) if job.log else None
            if status and status.get("state") == "failed":
                error = status["error"]
            else:
                error = "; ".join(part for part in (reason, last_line(job.log)) if part) or "failed"
                error = f"ended without reporting an error ({error})"
            self.say(f"✗ {job.name}: {error}")
            if job.log:
                self.say(f"  log: {job.log}")

    def error(self, message: str) -> None:
        if (text := workflow_error(message)) is not None:
            with self.lock:
                self.say(f"✗ {text}")

    def note(self, message: str) -> None:
        with self.lock:
            self.say(message)

    def close(self) -> None:
        self.stopped.set()
        self.poller.join(timeout=2)
        with self.lock:
            if self.bars is not None:
                self.bars.stop()
                self.bars = None

    def _end(self, jobid: int) -> Job | None:
        job = self.jobs.pop(jobid, None)
        if job is not None and job.task is not None and self.bars is not None:
            self.bars.remove_task(job.task)
            self.bars.refresh()
        return job

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("  {task.description}"),
            BarColumn(bar_width=30),
            RowsColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            auto_refresh=False,  # drawn on the display's events, not on a timer of rich's own
        )

    def _poll(self) -> None:
        while not self.stopped.wait(POLL):
            self.refresh()

    def refresh(self) -> None:
        """Read the running jobs' status files once and show what they say: the bars redrawn, or off a
        terminal a line for each job whose progress changed."""
        with self.lock:
            jobs = list(self.jobs.values())
        statuses = [(job, read_status(job.log, self.run)) for job in jobs]  # file reads outside the lock
        with self.lock:
            for job, status in statuses:
                if status and "n" in status and job in self.jobs.values():
                    try:
                        self._show(job, status)
                    except Exception:  # noqa: BLE001 - a malformed status must not end the display
                        continue
            if self.bars is not None:
                self.bars.refresh()

    def _show(self, job: Job, status: dict) -> None:
        n, total, unit = status["n"], status.get("total"), status.get("unit") or "rows"
        if self.bars is not None and job.task is not None:
            self.bars.update(
                job.task, completed=n, total=total, description=bar_name(job, status.get("desc")), unit=unit
            )
            return
        now = time.monotonic()
        if n == job.seen or now - job.shown < PLAIN_INTERVAL:
            return
        job.shown, job.seen = now, n
        rate = n / status["elapsed"] if status.get("elapsed") else 0.0
        of = f"{n:,}/{total:,} {unit} ({100 * n / total:.0f}%)" if total else f"{n:,} {unit}"
        left = f", {(total - n) / rate:,.0f} s left" if total and rate else ""
        self.say(f"  {bar_name(job, status.get('desc'))}: {of}, {rate:,.0f} {unit}/s{left}")
