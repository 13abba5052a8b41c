"""Rule train_index: train an IVF index's quantizers on a sample of the corpus, once for all parts."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.search import train_index
from negflow.stage import run_stage


def main(log):
    import faiss

    faiss.omp_set_num_threads(snakemake.threads)
    train_index(list(snakemake.input.corpus), snakemake.params.settings, snakemake.output.trained)


run_stage(snakemake.log[0], main)
