"""Rule build_index: train and fill an approximate (IVF or HNSW) index once, for every search shard."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.files import run_stage
from negflow.search import write_index


def main(log):
    import faiss

    faiss.omp_set_num_threads(snakemake.threads)
    write_index(list(snakemake.input.corpus), snakemake.params.settings, snakemake.output[0])


run_stage(snakemake.log[0], main)
