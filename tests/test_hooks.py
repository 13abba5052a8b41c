"""The Snakefile's exit hook cancels the real scheduler's pending timer and nothing else."""

import threading
from types import SimpleNamespace

from snakemake.scheduling.job_scheduler import JobScheduler

from negflow.hooks import cancel_scheduler_timers


def test_cancels_the_schedulers_pending_timer_and_leaves_other_timers():
    # What the scheduler does on each pass: start a timer that releases its open-jobs semaphore.
    scheduler = SimpleNamespace(_open_jobs=threading.Semaphore(0))
    before = set(threading.enumerate())
    JobScheduler._schedule_reevalutation(scheduler, 30)
    (scheduler_timer,) = set(threading.enumerate()) - before
    assert isinstance(scheduler_timer, threading.Timer) and not scheduler_timer.daemon
    other_fired = threading.Event()
    other = threading.Timer(0.2, other_fired.set)
    other.start()

    assert cancel_scheduler_timers() == 1
    scheduler_timer.join(timeout=5)
    assert not scheduler_timer.is_alive()  # the interpreter no longer waits 30 s for it at exit
    assert not scheduler._open_jobs.acquire(blocking=False)  # cancelled, not fired
    assert other_fired.wait(timeout=5)  # an unrelated timer still runs
    assert cancel_scheduler_timers() == 0
