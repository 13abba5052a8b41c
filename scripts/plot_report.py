"""Rule plot_report: the run report's counts, score histograms, rank histogram and example queries."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.report import build_report
from negflow.stage import run_stage


def main(log):
    counts = build_report(
        dataset=snakemake.wildcards.dataset,
        negatives_path=snakemake.input.negatives,
        selection_path=snakemake.input.selection,
        candidates_path=snakemake.input.candidates,
        corpus_dir=snakemake.input.corpus_dir,
        queries_dir=snakemake.input.queries_dir,
        candidates=snakemake.params.candidates,
        out_summary=snakemake.output.summary,
        out_scores=snakemake.output.scores,
        out_ranks=snakemake.output.ranks,
        out_examples=snakemake.output.examples,
    )
    log.info("report of %s", counts)
    return counts


run_stage(snakemake.log[0], main)
