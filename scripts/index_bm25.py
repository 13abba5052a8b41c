"""Rule index_bm25: the bm25 source's index of the prepared corpus."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.bm25 import index_bm25
from negflow.stage import run_stage


def main(log):
    return index_bm25(snakemake.input.corpus_dir, snakemake.params.settings, snakemake.output.index)


run_stage(snakemake.log[0], main)
