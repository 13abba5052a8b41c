"""How a bench measures a process's memory: its own peak, not one it inherited.

Linux carries a process's peak RSS into a child that subprocess starts (vfork, then exec): the child's
`ru_maxrss` starts from its parent's high-water mark (a parent that allocated 800 MB and freed it spawns a
child that reports 813 MB), so a bench whose parent generated the data would report the parent's peak for
every stage it measures. `VmHWM` in /proc/self/status belongs to the process's own address space, which
exec replaces. Linux only: elsewhere the benches' memory figures are not measured.
"""

from __future__ import annotations


def process_status_mb(*fields: str) -> dict[str, int]:
    """Fields of /proc/self/status given in kB (VmHWM: peak resident set; RssAnon, RssFile: the private
    and file-backed parts now), in MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        values = dict(line.split(":", 1) for line in status if ":" in line)
    return {field: int(values[field].split()[0]) // 1024 for field in fields}


def peak_rss_mb() -> float:
    """This process's peak resident set in MB since its exec (VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return kb / 1024


def in_fresh_process(function, *args):
    """`function(*args)` in a spawned process, so that generating a bench's data never swells this one (nor,
    through ru_maxrss, what a tool that reads it would report of the children)."""
    import multiprocessing  # here, not at the top: a measured child that imports peak_rss_mb stays lean
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()
