"""Rule compute_qrels_cosines: the exact cosine of every qrels (query, document) pair."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.search import compute_qrels_cosines
from negflow.stage import run_stage


def main(log):
    pairs = compute_qrels_cosines(
        corpus_shards=list(snakemake.input.corpus),
        query_shards=list(snakemake.input.queries),
        queries_dir=snakemake.input.queries_dir,
        qrels_dir=snakemake.input.qrels_dir,
        out_path=snakemake.output.cosines,
    )
    return {"pairs": pairs}


run_stage(snakemake.log[0], main)
