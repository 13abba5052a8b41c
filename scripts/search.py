"""Rule search: FAISS top candidates of one batch of queries (one scatter shard of the candidates)."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.search import search_shard
from negflow.stage import run_stage


def main(log):
    import faiss

    faiss.omp_set_num_threads(snakemake.threads)
    return search_shard(
        corpus_shards=list(snakemake.input.corpus),
        query_shards=list(snakemake.input.queries),
        corpus_dir=snakemake.input.corpus_dir,
        queries_dir=snakemake.input.queries_dir,
        qrels_dir=snakemake.input.qrels_dir,
        settings=snakemake.params.settings,
        batch_size=snakemake.resources.batch_size,
        out_path=snakemake.output.candidates,
        shard=snakemake.wildcards.scatteritem,
        index_path=snakemake.input.index or None,
    )


run_stage(snakemake.log[0], main)
