"""Killing a workflow run at a moment placed by its state (the job running, or stopped by a hook), for the
fault tests: Snakemake and every job are SIGKILLed together, and the kill waits until all are gone."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from conftest import snakemake_cmd

# Snakemake runs a `script:` job as `python .snakemake/scripts/tmpXXXXXXXX.<rule>.py`.
JOB_SCRIPT = re.compile(r"\.snakemake/scripts/tmp\w+\.(\w+)\.py$")


def jobs_of(snakemake_pid: int) -> dict[str, str]:
    """The rules with a job running under Snakemake (its process tree, read through /proc's children
    lists, so polling costs little), each with its state: R, S, D, or T for stopped."""
    jobs: dict[str, str] = {}
    todo = [snakemake_pid]
    while todo:
        pid = todo.pop()
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            todo += [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
        except OSError:
            continue  # ended meanwhile
        for rule in (m.group(1) for m in map(JOB_SCRIPT.search, args) if m):
            jobs[rule] = "T" if "T" in (state, jobs.get(rule)) else state
    return jobs


def group_alive(group: int) -> bool:
    """Whether a process of `group` is still alive (not yet a zombie)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            state, _ppid, pgrp = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == group and state != "Z":
                return True
    return False


def run_until_killed(
    workdir: Path, groups: set[int], rule: str, args: tuple[str, ...], hook: str | None = None, env: dict | None = None
) -> dict[str, str]:
    """Start the workflow with `args` in a process group of its own; once a job of `rule` is running (with
    `hook`, a sitecustomize every Python process of the run loads: once the job has stopped itself), SIGKILL
    the group, Snakemake and every job at once, and wait until all are gone. Returns the jobs alive at the
    kill, with their states."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    if hook:
        folder = workdir / "kill-hook"
        folder.mkdir(exist_ok=True)
        (folder / "sitecustomize.py").write_text(hook)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))
    out = workdir / f"killed-at-{rule}-{len(list(workdir.glob('killed-at-*')))}.out"
    with open(out, "w") as log:
        proc = subprocess.Popen(
            snakemake_cmd(workdir, *args), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    groups.add(proc.pid)
    try:
        deadline = time.monotonic() + 900  # a guard against a hang only: the wait is for the job's state
        while not ((state := (jobs := jobs_of(proc.pid)).get(rule)) and (state == "T" or not hook)):
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) first: {out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {rule} job {'stopped' if hook else 'started'}"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        while group_alive(proc.pid):
            time.sleep(0.01)
        groups.discard(proc.pid)
    return jobs
