"""Rule calibrate_selection: estimate each candidate setting's false-negative share on this run's candidates
and choose the hardest within fn_budget (selection: auto); writes calibration.json."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.calibration import calibrate_stage
from negflow.stage import run_stage


def main(log):
    return calibrate_stage(snakemake.input, snakemake.params.settings, snakemake.output.calibration)


run_stage(snakemake.log[0], main)
