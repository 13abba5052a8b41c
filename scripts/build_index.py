"""Rule build_index: the search index every search shard loads, merged from IVF parts or built whole (HNSW)."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.search import merge_index_parts, write_index
from negflow.stage import run_stage


def main(log):
    import faiss

    faiss.omp_set_num_threads(snakemake.threads)
    if hasattr(snakemake.input, "parts"):
        merge_index_parts(list(snakemake.input.parts), snakemake.output.index)
    else:
        write_index(list(snakemake.input.corpus), snakemake.params.settings, snakemake.output.index)


run_stage(snakemake.log[0], main)
