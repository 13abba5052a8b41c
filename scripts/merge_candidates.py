"""Rule merge_candidates: gather the search shards into the mined qrels, plus the qrels' own cosines."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.search import merge_candidates
from negflow.stage import run_stage


def main(log):
    merge_candidates(
        shard_paths=list(snakemake.input.shards),
        corpus_shards=list(snakemake.input.corpus),
        query_shards=list(snakemake.input.queries),
        queries_dir=snakemake.input.queries_dir,
        qrels_dir=snakemake.input.qrels_dir,
        out_mined=snakemake.output.mined,
        out_qrels=snakemake.output.qrels,
    )


run_stage(snakemake.log[0], main)
