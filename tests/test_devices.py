"""GPU leasing without GPUs: the lease logic only reads CUDA_VISIBLE_DEVICES, nvidia-smi and lock files,
so fake device ids exercise it for real, with separate processes holding the locks."""

import logging
import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO

from negflow.devices import lease_device, visible_gpus

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


def leased(proc, timeout=30):
    """The device id the holder printed, or None if it is still waiting after `timeout` seconds."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return None
    return proc.stdout.readline().strip()


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
    assert leased(third, timeout=3) is None  # both devices taken: it waits
    release(first)
    assert leased(third) == "0"
    release(second)
    release(third)
    assert "all 2 GPUs (0,1) are leased by other jobs; waiting" in third.stderr.read()


@pytest.mark.slow
def test_a_killed_job_frees_its_device(tmp_path):
    holder = start_holder(tmp_path, visible="7")
    assert leased(holder) == "7"
    waiter = start_holder(tmp_path, visible="7")
    assert leased(waiter, timeout=3) is None
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


def test_lease_narrows_cuda_visible_devices_in_process(monkeypatch, tmp_path):
    monkeypatch.setenv("NEGFLOW_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    holder = start_holder(tmp_path, visible="4")
    assert leased(holder) == "4"
    assert lease_device("cuda") == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert oct(os.stat(tmp_path).st_mode & 0o7777) == "0o1777"  # shared with other users' jobs, like /tmp
    release(holder)
