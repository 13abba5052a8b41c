"""How a rule's script runs its stage: logging into the rule's log, a GPU lease, known problems as one line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from negflow import progress
from negflow.errors import ConfigError, InputError


def setup_logging(log_path: str | None) -> logging.Logger:
    """Send stderr (tqdm bars, warnings, tracebacks) and negflow's log lines to the rule's log file."""
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        sys.stderr = open(log_path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the job
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    return logging.getLogger("negflow")


def run_stage(log_path: str | None, stage, gpu_device: str | None = None) -> None:
    """Run one stage with logging set up; a known input problem becomes one line in the log and on the
    terminal (Snakemake shows the failing rule's log path), with exit status 1. The job's status file
    (`progress`) ends with the counts the stage returns, or its error. A GPU stage passes its
    `device` setting: the job leases its own GPU before the stage can touch CUDA."""
    log = setup_logging(log_path)
    progress.report_to(log_path)
    if os.environ.get("SLURM_JOB_ID"):
        log.info("running as SLURM job %s on %s", os.environ["SLURM_JOB_ID"], os.uname().nodename)
    try:
        if gpu_device is not None:
            from negflow.devices import lease_device

            lease_device(gpu_device)
        counts = stage(log)
    except (InputError, ConfigError) as e:
        log.error("%s", e)
        progress.failed(str(e))
        if not os.environ.get(progress.DISPLAY_ENV):  # else the negflow command's display shows it
            print(f"negflow error: {e}", file=sys.__stderr__)
        sys.exit(1)
    except BaseException as e:  # the traceback goes to the log; the display shows this line
        message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        progress.failed(message.splitlines()[0])
        raise
    progress.finished(counts)
