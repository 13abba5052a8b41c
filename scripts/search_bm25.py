"""Rule search_bm25: BM25 candidates of one shard of the queries."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.bm25 import search_bm25
from negflow.search import per_source
from negflow.stage import run_stage


def main(log):
    settings = snakemake.params.settings
    return search_bm25(
        index_dir=snakemake.input.index,
        queries_dir=snakemake.input.queries_dir,
        corpus_dir=snakemake.input.corpus_dir,
        qrels_dir=snakemake.input.qrels_dir,
        settings=settings,
        candidates=per_source(settings),
        out_path=snakemake.output.candidates,
        shard=snakemake.wildcards.scatteritem,
        threads=snakemake.threads,
    )


run_stage(snakemake.log[0], main)
