"""Rule plot_calibration: selection: auto's estimated false negatives against hardness, as a figure."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.report import calibration_report
from negflow.stage import run_stage


def main(log):
    return calibration_report(snakemake.input.calibration, snakemake.output.figure, snakemake.wildcards.dataset)


run_stage(snakemake.log[0], main)
