"""Rule prepare_ce_pairs: tokenize every unique (query, document) pair for the cross-encoder."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.models import LoadOptions
from negflow.score import prepare_ce_pairs
from negflow.stage import run_stage


def main(log):
    s = snakemake.params.settings
    pairs = prepare_ce_pairs(
        candidates_path=snakemake.input.candidates,
        qrels_path=snakemake.input.qrels,
        corpus_dir=snakemake.input.corpus_dir,
        queries_dir=snakemake.input.queries_dir,
        ce_ref=s["ce"],
        seq_len=s["ce_seq_len"],
        out_dir=snakemake.output.pairs,
        workers=snakemake.threads,
        options=LoadOptions.of(s, "ce"),
    )
    return {"pairs": pairs}


run_stage(snakemake.log[0], main)
