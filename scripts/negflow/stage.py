"""How a rule's script runs its stage: logging into the rule's log, a GPU lease, known problems as one line."""

from __future__ import annotations

import ast
import functools
import logging
import os
import sys
from pathlib import Path

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
    terminal (Snakemake shows the failing rule's log path), with exit status 1. A GPU stage passes its
    `device` setting: the job leases its own GPU before the stage can touch CUDA."""
    log = setup_logging(log_path)
    if os.environ.get("SLURM_JOB_ID"):
        log.info("running as SLURM job %s on %s", os.environ["SLURM_JOB_ID"], os.uname().nodename)
    if gpu_device is not None:
        from negflow.devices import lease_device

        lease_device(gpu_device)
    try:
        stage(log)
    except (InputError, ConfigError) as e:
        log.error("%s", e)
        print(f"negflow error: {e}", file=sys.__stderr__)
        sys.exit(1)


@functools.cache
def library_imports(path: Path) -> frozenset[str]:
    """The negflow modules a Python file imports (`negflow.X` or `from negflow import X`), anywhere in it.
    Cached: every rule asks for its script's modules while Snakemake builds the DAG, and most share them."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "negflow":
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("negflow."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("negflow."))
    return frozenset(names)


def script_modules(script: str | os.PathLike) -> list[str]:
    """The library files a stage script imports, directly or through other library modules; imports inside
    functions count, since they run too. Snakemake's code trigger sees only the script itself, so the rules
    list these as inputs. The library is `negflow/` beside the script in a checkout, the installed package
    when the workflow runs from a wheel."""
    package = Path(script).parent / "negflow"
    if not package.is_dir():
        package = Path(__file__).parent
    seen: set[str] = set()
    todo = [Path(script)]
    while todo:
        for name in library_imports(todo.pop()):
            if name not in seen and (package / f"{name}.py").is_file():
                seen.add(name)
                todo.append(package / f"{name}.py")
    return sorted(str(package / f"{name}.py") for name in seen)
