"""Rule merge_scores: gather the cross-encoder score shards into one table."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.score import merge_scores
from negflow.stage import run_stage


def main(log):
    return {"pairs": merge_scores(list(snakemake.input.shards), snakemake.output.scores)}


run_stage(snakemake.log[0], main)
