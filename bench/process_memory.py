"""How a bench measures a process's memory: its own peak, not one it inherited.

Linux carries a process's peak RSS across fork and exec: a child's `ru_maxrss` starts from its parent's
high-water mark at the fork (a parent that allocated 800 MB and freed it spawns a child that reports
813 MB), so a bench whose parent generated the data would report the parent's peak for every stage it
measures. `VmHWM` in /proc/self/status belongs to the process's own address space, which exec replaces.
"""

from __future__ import annotations

import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor


def peak_rss_mb() -> float:
    """This process's peak resident set in MB since its exec (VmHWM); `ru_maxrss` where /proc has none."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def in_fresh_process(function, *args):
    """`function(*args)` in a spawned process, so that generating a bench's data never swells this one (nor,
    through ru_maxrss, what a tool that reads it would report of the children)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()
