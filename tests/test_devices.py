"""GPU leasing without GPUs: the lease logic only reads CUDA_VISIBLE_DEVICES, nvidia-smi and lock files,
so fake device ids exercise it for real, with separate processes holding the locks."""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from negflow import devices
from negflow.devices import acquire_gpu, lease_device, visible_gpus
from negflow.errors import ConfigError

HOLDER = """
import logging, os, sys
sys.path.insert(0, {scripts!r})
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from negflow.devices import lease_device
lease_device("auto")
print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
sys.stdin.read()  # hold the lease until the test closes stdin
"""


def start_holder(lock_dir, visible="0,1"):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible, "NEGFLOW_GPU_LOCK_DIR": str(lock_dir)}
    env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(scripts=str(REPO / "scripts"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def leased(proc, timeout=120):
    """The device id the holder printed, or None if it is still waiting after `timeout` seconds."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return None
    return proc.stdout.readline().strip()


def waiting(proc, timeout=120) -> str:
    """Block until the holder logs that every device is taken (it is then waiting on the locks); its stderr
    so far. An event, not a time window: a slow machine only makes it come later."""
    import selectors

    seen = ""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while "are leased by other jobs; waiting" not in seen:
            assert sel.select(timeout), f"the holder never waited; its log: {seen}"
            line = proc.stderr.readline()
            assert line, f"the holder ended; its log: {seen}"
            seen += line
    return seen


def release(proc):
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("value", "gpus"),
    [
        ("0,1", ["0", "1"]),
        (" 2, 3 ", ["2", "3"]),
        ("", []),
        ("1,-1,2", ["1"]),
        ("GPU-5f1e,GPU-77aa", ["GPU-5f1e", "GPU-77aa"]),
    ],
)
def test_visible_gpus_read_cuda_visible_devices_as_cuda_does(monkeypatch, value, gpus):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_gpus() == gpus


@pytest.mark.slow
def test_jobs_take_free_devices_in_order_wait_when_all_are_taken_and_inherit_released_ones(tmp_path):
    first = start_holder(tmp_path)
    assert leased(first) == "0"
    second = start_holder(tmp_path)
    assert leased(second) == "1"
    third = start_holder(tmp_path)
    assert "all 2 GPUs (0,1) are leased by other jobs; waiting" in waiting(third)  # both devices taken
    release(first)
    assert leased(third) == "0"
    release(second)
    release(third)


@pytest.mark.slow
def test_a_killed_job_frees_its_device(tmp_path):
    holder = start_holder(tmp_path, visible="7")
    assert leased(holder) == "7"
    waiter = start_holder(tmp_path, visible="7")
    waiting(waiter)
    holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the lock with the process
    holder.wait(timeout=30)
    assert leased(waiter) == "7"
    release(waiter)


def test_no_lease_under_slurm_for_explicit_devices_or_without_gpus(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NEGFLOW_GPU_LOCK_DIR", str(tmp_path / "locks"))
    caplog.set_level(logging.INFO, logger="negflow")

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_GPUS", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert lease_device("auto") is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"  # SLURM's choice stands
    assert "SLURM job 4242: using the GPUs SLURM assigned (SLURM_JOB_GPUS=3 CUDA_VISIBLE_DEVICES=3)" in caplog.text

    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    for explicit in ("cpu", "cuda:1"):
        assert lease_device(explicit) is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: a machine without GPUs
    assert lease_device("auto") is None
    assert "no GPU visible" in caplog.text and "running on the CPU" in caplog.text
    assert not (tmp_path / "locks").exists()


@pytest.mark.slow  # a child process
def test_lease_narrows_cuda_visible_devices_in_process(monkeypatch, tmp_path):
    monkeypatch.setenv("NEGFLOW_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    mode = os.stat(tmp_path).st_mode
    holder = start_holder(tmp_path, visible="4")
    assert leased(holder) == "4"
    assert lease_device("cuda") == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert os.stat(tmp_path).st_mode == mode  # a folder of one's own keeps its mode
    release(holder)


def planted(tmp_path: Path) -> tuple[Path, Path]:
    """A lock folder of our own and a file of the victim's, with its content and mode."""
    locks = tmp_path / "locks"
    locks.mkdir()
    victim = tmp_path / "victim.bashrc"
    victim.write_text("export PATH=$HOME/bin:$PATH\n")
    victim.chmod(0o600)
    return locks, victim


def unchanged(victim: Path) -> bool:
    return victim.read_text() == "export PATH=$HOME/bin:$PATH\n" and oct(victim.stat().st_mode & 0o777) == "0o600"


def test_a_planted_symlink_lock_file_is_refused_and_its_target_untouched(tmp_path):
    locks, victim = planted(tmp_path)
    (locks / "gpu-0.lock").symlink_to(victim)
    with pytest.raises(ConfigError) as refused:
        acquire_gpu(["0"], str(locks))
    assert str(refused.value) == (
        f"{locks}/gpu-0.lock: the GPU lock file is a symbolic link, which negflow never makes; another user may "
        "have planted it. Set NEGFLOW_GPU_LOCK_DIR to a folder of your own (on a shared node, one all your jobs "
        "use) or remove it"
    )
    assert unchanged(victim)
    (locks / "gpu-0.lock").unlink()
    (locks / "gpu-0.lock").symlink_to(tmp_path / "missing")  # a dangling link is not created through either
    with pytest.raises(ConfigError, match="is a symbolic link"):
        acquire_gpu(["0"], str(locks))
    assert not (tmp_path / "missing").exists()


def test_a_hard_link_or_a_linked_lock_folder_is_refused(tmp_path):
    locks, victim = planted(tmp_path)
    os.link(victim, locks / "gpu-0.lock")
    with pytest.raises(ConfigError, match="gpu-0.lock: the GPU lock file has 2 hard links"):
        acquire_gpu(["0"], str(locks))
    assert unchanged(victim)
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "linked").symlink_to(home)
    with pytest.raises(ConfigError, match="linked: the GPU lock folder is a symbolic link or not a folder"):
        acquire_gpu(["0"], str(tmp_path / "linked"))
    assert list(home.iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="making a folder another user's needs root")
def test_another_users_lock_folder_is_used_only_as_negflow_makes_it(tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir()
    os.chown(locks, 4242, 4242)
    locks.chmod(0o777)  # anyone may swap its files: refused
    with pytest.raises(ConfigError, match="the GPU lock folder belongs to user 4242 with mode 777"):
        acquire_gpu(["0"], str(locks))
    locks.chmod(0o2775)  # a group's folder, e.g. a lab's: fine
    assert acquire_gpu(["0"], str(locks)) == "0"
    os.close(devices._held_locks.pop())
    os.unlink(locks / "gpu-0.lock")
    locks.chmod(0o1777)  # what that user's negflow job made: shared, sticky
    (locks / "gpu-0.lock").write_text("")
    os.chown(locks / "gpu-0.lock", 4242, 4242)
    (locks / "gpu-0.lock").chmod(0o644)
    with pytest.raises(ConfigError, match="the GPU lock file belongs to user 4242 with mode 644"):
        acquire_gpu(["0"], str(locks))
    (locks / "gpu-0.lock").chmod(0o666)
    assert acquire_gpu(["0"], str(locks)) == "0"
    os.close(devices._held_locks.pop())
