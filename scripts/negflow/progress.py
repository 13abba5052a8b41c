"""Progress a job shows beyond its log. A stage's bars are `ProgressBar`s: tqdm into the rule's log as before,
and the bar's state also goes to the job's status file, `<log>.progress`, which the `negflow` command's
display (`display`) reads while the job runs; at the end the file holds the job's counts or its one-line
error, and no bar closing after that (a failed stage's, freed at exit) writes over it. The file is small
JSON, replaced atomically and at most every INTERVAL seconds, so a bar costs no more than before; without a
log (a library call) nothing is written, and a status that cannot be written never fails the job.

Every status carries the token of the run that started the job (RUN_ENV, which the display sets and the
jobs inherit, through sbatch on SLURM too): a file's mtime comes from whichever clock wrote it (a compute
node's, a file server's), so only the token tells this run's status from an earlier run's."""

from __future__ import annotations

import json
import os
import time
from numbers import Integral

from tqdm import tqdm

STATUS_SUFFIX = ".progress"
DISPLAY_ENV = "NEGFLOW_DISPLAY"  # set while the negflow command's display shows the jobs' errors itself
RUN_ENV = "NEGFLOW_RUN"  # the display's run token, which every status the run's jobs write carries
INTERVAL = float(os.environ.get("NEGFLOW_PROGRESS_INTERVAL", "0.5"))  # seconds between status writes
# the counts a finished job's line shows, in this order, where its stage returns them
SHOWN_COUNTS = ("records", "documents", "queries", "pairs", "candidates", "negatives", "judgments", "rows")

_status_path: str | None = None
_run: str | None = None
_last_write = float("-inf")
_ended = False


def status_path(log_path: str) -> str:
    return log_path + STATUS_SUFFIX


def report_to(log_path: str | None) -> None:
    """Report this job's progress beside its log from now on (stage.run_stage calls it first), marked with
    the run token this job inherited, if any."""
    global _status_path, _run, _last_write, _ended
    _status_path = None if log_path is None else status_path(log_path)
    _run = os.environ.get(RUN_ENV) or None
    _last_write = float("-inf")  # the first update reports
    _ended = False
    _write({"state": "running"})


def _write(state: dict) -> None:
    if _status_path is None or (_ended and state["state"] == "running"):
        return
    tmp = f"{_status_path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state if _run is None else {**state, "run": _run}, f)
        os.replace(tmp, _status_path)
    except OSError:  # a full disk or a vanished log folder: the job's own outputs decide, not its status
        pass


def _end(state: dict) -> None:
    global _ended
    _write(state)
    _ended = True


def finished(counts) -> None:
    """The job ended well: of the counts its stage returned (a dict, or anything else), those SHOWN_COUNTS names."""
    counts = counts if isinstance(counts, dict) else {}
    number = {key: counts.get(key) for key in SHOWN_COUNTS}
    shown = {key: int(n) for key, n in number.items() if isinstance(n, Integral) and not isinstance(n, bool)}
    _end({"state": "done", "counts": shown})


def failed(error: str) -> None:
    _end({"state": "failed", "error": error})


def read_status(log_path: str, run: str | None = None) -> dict | None:
    """A job's status as it last wrote it, or None when there is none yet: none written, or (`run`, a run
    token) only one that another run wrote, whatever its mtime."""
    try:
        with open(status_path(log_path), encoding="utf-8") as f:
            status = json.load(f)
    except (OSError, ValueError):  # not written yet, or replaced while read on a filesystem without atomic renames
        return None
    if not isinstance(status, dict) or (run is not None and status.get("run") != run):
        return None
    return status


class ProgressBar(tqdm):
    """A tqdm bar into the rule's log whose state also goes to the job's status file. Count with update():
    iterating a tqdm keeps its count to itself until it redraws, so this bar refuses it."""

    def __iter__(self):
        raise TypeError("a ProgressBar counts with update(); iterating it would report its progress only at the end")

    def update(self, n=1):
        shown = super().update(n)
        global _last_write
        now = time.monotonic()
        if _status_path is not None and not self.disable and now - _last_write >= INTERVAL:
            _last_write = now
            self._report()
        return shown

    def close(self):
        if _status_path is not None and not self.disable:
            self._report()  # the bar's last state
        super().close()

    def _report(self) -> None:
        state = self.format_dict
        _write(
            {
                "state": "running",
                "desc": self.desc,
                "n": state["n"],
                "total": state["total"],
                "unit": state["unit"].strip(),
                "elapsed": round(state["elapsed"], 3),
            }
        )
