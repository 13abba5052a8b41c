"""Give each GPU job a GPU of its own.

Snakemake's `--resources gpu=N` only caps how many GPU jobs run at once; it never says which device a
job should use, so without help every job lands on cuda:0. A job outside SLURM takes the first free
device among those visible with an exclusive lock file, holds it for the life of its process (the
kernel drops the lock when the process ends, SIGKILL included, so a crashed job never strands a GPU)
and narrows CUDA_VISIBLE_DEVICES to it before anything touches CUDA. Under SLURM the job uses what
SLURM assigned: SLURM has already narrowed CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import time

log = logging.getLogger("negflow")

LOCK_DIR_ENV = "NEGFLOW_GPU_LOCK_DIR"
# Node-local and the same for every job: a per-job TMPDIR (SLURM, some schedulers) would give each job
# private locks and two jobs the same GPU.
DEFAULT_LOCK_DIR = "/tmp/negflow-gpu-locks"
LEASED_DEVICES = ("auto", "cuda")  # an explicit cuda:N or cpu is the user's choice and is not leased

# what SLURM tells a job (or job step) about its GPUs, logged so a run shows which device each job had
SLURM_GPU_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "GPU_DEVICE_ORDINAL", "SLURM_GPUS", "CUDA_VISIBLE_DEVICES")

_held_locks: list[int] = []  # lock file descriptors, open until the process exits


def lock_dir() -> str:
    return os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR


def visible_gpus() -> list[str]:
    """The GPUs this process may use, by the ids CUDA_VISIBLE_DEVICES gives them (indices or UUIDs);
    without that variable, every GPU nvidia-smi lists. CUDA stops reading the list at a negative id."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return _nvidia_smi_gpus()
    gpus = []
    for entry in env.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        gpus.append(entry)
    return gpus


def _nvidia_smi_gpus() -> list[str]:
    """GPU indices from nvidia-smi, which (unlike asking the CUDA runtime) leaves this process free to
    set CUDA_VISIBLE_DEVICES afterwards. No nvidia-smi or no driver means no GPUs."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def _try_lock(directory: str, gpu: str) -> int | None:
    """An exclusive, non-blocking lock on the GPU's lock file; the open descriptor, or None if taken."""
    path = os.path.join(directory, f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o666)  # other users' jobs must be able to lock it too
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def acquire_gpu(gpus: list[str], directory: str, poll_seconds: float = 2.0) -> str:
    """Lock the first free GPU of `gpus`, waiting while all are taken; the lock lives until the process exits."""
    os.makedirs(directory, exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chmod(directory, 0o1777)  # shared by every user's jobs on this node, like /tmp
    waited = 0.0
    while True:
        for gpu in gpus:
            fd = _try_lock(directory, gpu)
            if fd is not None:
                _held_locks.append(fd)
                if waited:
                    log.info("waited %.0f s for a free GPU", waited)
                return gpu
        if not waited:
            log.info("all %d GPUs (%s) are leased by other jobs; waiting for one", len(gpus), ",".join(gpus))
        time.sleep(poll_seconds)
        waited += poll_seconds


def lease_device(device_setting: str) -> str | None:
    """Pick this job's GPU before CUDA is initialised. Returns the leased GPU id, or None when the job
    runs where SLURM or the config put it, or on the CPU."""
    if device_setting not in LEASED_DEVICES:
        log.info("device %s set in the config: no GPU lease", device_setting)
        return None
    if os.environ.get("SLURM_JOB_ID"):
        assigned = " ".join(f"{k}={os.environ[k]}" for k in SLURM_GPU_VARIABLES if k in os.environ)
        log.info("SLURM job %s: using the GPUs SLURM assigned (%s)", os.environ["SLURM_JOB_ID"], assigned or "none")
        return None
    gpus = visible_gpus()
    if not gpus:
        log.info("no GPU visible (CUDA_VISIBLE_DEVICES unset or empty, no nvidia-smi GPUs): running on the CPU")
        return None
    directory = lock_dir()
    gpu = acquire_gpu(gpus, directory)
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    log.info("leased GPU %s of %s (lock in %s); CUDA_VISIBLE_DEVICES=%s", gpu, ",".join(gpus), directory, gpu)
    return gpu
