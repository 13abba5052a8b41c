"""Give each GPU job a GPU of its own.

Snakemake's `--resources gpu=N` only caps how many GPU jobs run at once; it never says which device a
job should use, so without help every job lands on cuda:0. A job outside SLURM takes the first free
device among those visible with an exclusive lock file, holds it for the life of its process (the
kernel drops the lock when the process ends, SIGKILL included, so a crashed job never strands a GPU)
and narrows CUDA_VISIBLE_DEVICES to it before anything touches CUDA. Under SLURM the job uses what
SLURM assigned: SLURM has already narrowed CUDA_VISIBLE_DEVICES.

The lock folder is shared by every user's jobs on a node, so what is in it is not trusted: a lock file is
opened without following a symbolic link, and a folder or file that is not what negflow makes (a real
folder, ours or the sticky world-writable one another user's job made; a plain file with one link) stops
the job with one line, before it writes anything.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import subprocess
import time

from negflow.errors import ConfigError

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


def _refuse(path: str, what: str) -> ConfigError:
    return ConfigError(
        f"{path}: {what}, which negflow never makes; another user may have planted it. Set {LOCK_DIR_ENV} to a "
        "folder of your own (on a shared node, one all your jobs use) or remove it"
    )


def open_lock_dir(directory: str) -> int:
    """The lock folder, created if missing and opened without following a link (its files are then opened
    relative to this descriptor, so the folder cannot be swapped for a link in between). Another user's
    folder that anyone may write in must be sticky (mode 1777, as negflow makes the default one, shared by
    every user's jobs on a node); a group's folder (e.g. 2775) is fine. The default folder, when ours, is
    made that sticky shared one; a folder of one's own (NEGFLOW_GPU_LOCK_DIR) keeps its mode."""
    os.makedirs(directory, exist_ok=True)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refuse(directory, "the GPU lock folder is a symbolic link or not a folder") from None
        raise
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == os.getuid():
        if directory == DEFAULT_LOCK_DIR:
            os.fchmod(fd, 0o1777)  # shared by every user's jobs on this node, like /tmp
    elif st.st_uid != 0 and mode & 0o002 and not mode & stat.S_ISVTX:
        os.close(fd)
        raise _refuse(directory, f"the GPU lock folder belongs to user {st.st_uid} with mode {mode:o}")
    return fd


def _open_lock_file(folder: int, directory: str, name: str) -> int:
    """A lock file of the folder (descriptor `folder`), created if missing, opened without following a link
    and checked to be a plain file with one link, ours or another negflow job's (mode 666)."""
    path = os.path.join(directory, name)

    def open_it(flags: int) -> int:
        try:
            return os.open(name, flags | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=folder)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _refuse(path, "the GPU lock file is a symbolic link") from None
            raise

    try:  # an existing file is opened without O_CREAT: with fs.protected_regular, O_CREAT on another
        fd = open_it(0)  # user's file in a sticky folder is refused
    except FileNotFoundError:
        try:
            fd = open_it(os.O_CREAT | os.O_EXCL)
        except FileExistsError:  # another job made it in between
            fd = open_it(0)
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "the GPU lock file is not a plain file"
    elif st.st_nlink != 1:
        problem = f"the GPU lock file has {st.st_nlink} hard links"
    elif st.st_uid != os.getuid() and stat.S_IMODE(st.st_mode) != 0o666:
        problem = f"the GPU lock file belongs to user {st.st_uid} with mode {stat.S_IMODE(st.st_mode):o}"
    if problem:
        os.close(fd)
        raise _refuse(path, problem)
    return fd


def _try_lock(folder: int, directory: str, gpu: str) -> int | None:
    """An exclusive, non-blocking lock on the GPU's lock file; the open descriptor, or None if taken."""
    fd = _open_lock_file(folder, directory, f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if os.fstat(fd).st_uid == os.getuid():
        os.fchmod(fd, 0o666)  # other users' jobs must be able to lock it too
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def acquire_gpu(gpus: list[str], directory: str, poll_seconds: float = 2.0) -> str:
    """Lock the first free GPU of `gpus`, waiting while all are taken; the lock lives until the process exits."""
    folder = open_lock_dir(directory)
    waited = 0.0
    try:
        while True:
            for gpu in gpus:
                fd = _try_lock(folder, directory, gpu)
                if fd is not None:
                    _held_locks.append(fd)
                    if waited:
                        log.info("waited %.0f s for a free GPU", waited)
                    return gpu
            if not waited:
                log.info("all %d GPUs (%s) are leased by other jobs; waiting for one", len(gpus), ",".join(gpus))
            time.sleep(poll_seconds)
            waited += poll_seconds
    finally:
        os.close(folder)


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
