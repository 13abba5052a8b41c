"""Code the Snakefile runs inside Snakemake's own process, not in a job."""

from __future__ import annotations

import threading


def cancel_scheduler_timers() -> int:
    """Cancel the timers Snakemake's job scheduler leaves pending; return how many.

    On every scheduling pass the scheduler starts a non-daemon `threading.Timer` for its
    `--max-jobs-per-timespan` window (1 s by default), and the interpreter waits for the last one before
    it exits: about 1.3 s on every run, a quarter of a rerun's time. The Snakefile calls this from
    `onsuccess`/`onerror`, after the scheduler has finished, when those timers can only release a
    semaphore nobody waits on. Other timers are left alone."""
    timers = [
        thread
        for thread in threading.enumerate()
        if isinstance(thread, threading.Timer)
        and getattr(thread.function, "__qualname__", "").startswith("JobScheduler.")
    ]
    for timer in timers:
        timer.cancel()
    return len(timers)
