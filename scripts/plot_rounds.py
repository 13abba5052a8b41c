"""Rule plot_rounds: a dataset's rounds side by side, as numbers and one figure."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.files import write_json
from negflow.report import plot_rounds, summarize_rounds
from negflow.stage import run_stage


def main(log):
    inputs = snakemake.input
    rows = summarize_rounds(
        list(inputs.candidates), list(inputs.selections), list(inputs.audits), list(inputs.calibrations)
    )
    write_json(snakemake.output.summary, rows)
    plot_rounds(rows, snakemake.output.figure, snakemake.wildcards.dataset)
    return {"rounds": len(rows)}


run_stage(snakemake.log[0], main)
