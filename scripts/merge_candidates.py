"""Rule merge_candidates: gather the search shards into every query's candidates."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.search import merge_candidates
from negflow.stage import run_stage


def main(log):
    return merge_candidates(list(snakemake.input.shards), snakemake.output.candidates)


run_stage(snakemake.log[0], main)
