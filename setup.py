"""Ships the workflow (Snakefile, rules, stage scripts, config, envs, profiles, report captions) inside the
negflow package, so that a wheel carries everything `negflow mine` runs. Metadata is in pyproject.toml."""

import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
bundle = runpy.run_path(str(ROOT / "scripts" / "negflow" / "bundle.py"))


class BuildWithWorkflow(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:  # an editable install runs the checkout's own workflow
            target = Path(self.build_lib) / "negflow" / "workflow"
            shutil.rmtree(target, ignore_errors=True)
            bundle["copy_workflow"](ROOT, target, with_library=False)


setup(cmdclass={"build_py": BuildWithWorkflow})
