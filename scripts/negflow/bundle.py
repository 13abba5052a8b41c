"""Where the workflow lives: beside the library in a checkout, inside the package in an installed wheel.
Standard library only: the wheel build (setup.py) loads this file before any dependency is installed."""

from __future__ import annotations

import shutil
from pathlib import Path

# what `snakemake -s Snakefile` needs next to the Snakefile; `scripts` holds the thin stage scripts
WORKFLOW_PARTS = ("Snakefile", "rules", "scripts", "config", "envs", "profiles", "report")
PACKAGED = Path(__file__).resolve().parent / "workflow"
CHECKOUT = Path(__file__).resolve().parents[2]


def workflow_root() -> Path:
    """The folder holding the Snakefile negflow runs: the wheel's copy, else the checkout's own."""
    for root in (PACKAGED, CHECKOUT):
        if (root / "Snakefile").is_file():
            return root
    raise FileNotFoundError(f"no negflow workflow found in {PACKAGED} or {CHECKOUT}")


def copy_workflow(source: Path, dest: Path, with_library: bool) -> Path:
    """Copy the workflow parts from `source` to `dest`: with the library (`scripts/negflow`) for a checkout
    copy a test may edit, without it inside the package (the scripts import the installed library)."""
    skip = ["__pycache__", "*.egg-info"] + ([] if with_library else ["negflow"])
    for part in WORKFLOW_PARTS:
        path = source / part
        if path.is_dir():
            shutil.copytree(path, dest / part, ignore=shutil.ignore_patterns(*skip))
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / part)
    return dest
