"""Rule search: FAISS top candidates per query (the mined qrels) and the cosines of the qrels documents."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.files import run_stage
from negflow.search import search


def main(log):
    import faiss

    faiss.omp_set_num_threads(snakemake.threads)
    search(
        corpus_shards=list(snakemake.input.corpus),
        query_shards=list(snakemake.input.queries),
        corpus_dir=snakemake.input.corpus_dir,
        queries_dir=snakemake.input.queries_dir,
        qrels_dir=snakemake.input.qrels_dir,
        settings=snakemake.params.settings,
        batch_size=snakemake.resources.batch_size,
        out_mined=snakemake.output.mined,
        out_qrels=snakemake.output.qrels,
    )


run_stage(snakemake.log[0], main)
