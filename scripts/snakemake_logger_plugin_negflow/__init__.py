"""Snakemake's logger plugin `negflow` (`snakemake --logger=negflow`, which `negflow mine` runs): Snakemake's
job events go to negflow's run display (`negflow.display`) instead of Snakemake's job blocks."""

from __future__ import annotations

import logging
import os
import uuid

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent


class LogHandler(LogHandlerBase):
    def __post_init__(self) -> None:
        from rich.console import Console

        from negflow.display import RunDisplay
        from negflow.progress import DISPLAY_ENV, RUN_ENV

        # the jobs inherit both (SLURM's too: sbatch --export=ALL): they leave their one-line errors to the
        # display and mark their statuses as this run's
        os.environ[DISPLAY_ENV] = "1"
        os.environ[RUN_ENV] = uuid.uuid4().hex
        self.display = RunDisplay(Console(stderr=not self.common_settings.stdout), os.environ[RUN_ENV])

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.show(record)
        except Exception:  # noqa: BLE001 - logging's way: report it, keep the logging thread alive
            self.handleError(record)

    def show(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        log = (getattr(record, "log", None) or [None])[0]
        if event == LogEvent.JOB_INFO and not self.common_settings.dryrun:
            self.display.job_started(record.jobid, record.rule_name, record.wildcards or {}, log)
        elif event == LogEvent.JOB_INFO and log is not None:
            self.display.note(f"· would run {record.rule_name} ({record.reason})")
        elif event == LogEvent.JOB_FINISHED:
            self.display.job_finished(record.job_id)
        elif event == LogEvent.JOB_ERROR:
            self.display.job_failed(record.jobid, record.rule_name, log, getattr(record, "rule_msg", None))
        elif event == LogEvent.ERROR or (event is None and record.levelno >= logging.ERROR):
            self.display.error(record.getMessage())
        elif event is None and record.getMessage().startswith("Nothing to be done"):
            self.display.note("nothing to do: every requested file is up to date")
        elif event is None and record.levelno == logging.WARNING:
            self.display.note(f"! {record.getMessage().strip().splitlines()[0]}")

    def close(self) -> None:
        self.display.close()
        super().close()

    @property
    def writes_to_stream(self) -> bool:
        return True

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False
