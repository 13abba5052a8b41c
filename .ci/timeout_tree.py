"""timeout_tree.py SECONDS COMMAND...: run COMMAND with a time limit, then leave none of its processes.

`timeout` signals its own process group only: a process that starts a session of its own (test_faults
runs Snakemake in one to kill it with its jobs) escapes it and outlives a hung CI. Here the supervisor is
a child subreaper, so every orphaned descendant, whatever its session, becomes its child: on timeout (or
SIGTERM, SIGINT, SIGHUP to the supervisor) all descendants get SIGTERM, then after GRACE seconds SIGKILL;
when COMMAND ends, any descendant still alive is killed too. Exit status: COMMAND's, 124 on timeout.
Linux only; the system Python is enough (CI runs it before the virtual environment exists)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
GRACE = 60.0


class Stop(Exception):
    """The supervisor itself was asked to stop."""

    def __init__(self, signum: int):
        self.signum = signum


def descendants() -> list[int]:
    """This process's descendants, found through the parent links in /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [os.getpid()]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def signal_all(signum: int) -> list[int]:
    pids = descendants()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    return pids


def reap() -> None:
    """Collect the exit status of every child that has ended (orphans included), so none stays a zombie."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def kill_all() -> int:
    """SIGKILL every descendant until none is left (a process stuck in the kernel may take a while: at
    most a minute); returns how many were found at first."""
    first, deadline = None, time.monotonic() + 60
    while (pids := signal_all(signal.SIGKILL)) and time.monotonic() < deadline:
        first = len(pids) if first is None else first
        reap()
        time.sleep(0.05)
    if pids:
        print(f"timeout_tree: processes {pids} survived SIGKILL for a minute", file=sys.stderr)
    return first or 0


def main() -> int:
    limit, command = float(sys.argv[1]), sys.argv[2:]
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")

    def stop(signum, _frame):
        raise Stop(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    child = subprocess.Popen(command)
    try:
        try:
            return child.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            print(f"timeout_tree: {' '.join(command)} still running after {limit:.0f} s", file=sys.stderr)
            status = 124
        except Stop as e:
            print(f"timeout_tree: stopped by signal {e.signum}", file=sys.stderr)
            status = 128 + e.signum
        signal_all(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired, Stop):
            child.wait(timeout=GRACE)
        return status
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        killed = kill_all()
        if killed:
            print(f"timeout_tree: killed {killed} processes left behind by {command[0]}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
