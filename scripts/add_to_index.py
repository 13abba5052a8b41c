"""Rule add_to_index: add one corpus embedding shard to a copy of the trained IVF index."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.search import add_shard_to_index
from negflow.stage import run_stage


def main(log):
    import faiss

    faiss.omp_set_num_threads(snakemake.threads)
    add_shard_to_index(
        snakemake.input.trained, list(snakemake.input.corpus), snakemake.wildcards.scatteritem, snakemake.output.part
    )


run_stage(snakemake.log[0], main)
