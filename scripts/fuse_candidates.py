"""Rule fuse_candidates: every candidate source's lists, fused per query."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.sources import fuse_candidates, source_names
from negflow.stage import run_stage


def main(log):
    names = source_names(snakemake.params.settings["candidate_sources"])
    return fuse_candidates(
        {name: snakemake.input[name] for name in names},
        list(snakemake.input.corpus),
        list(snakemake.input.queries),
        snakemake.input.corpus_dir,
        snakemake.input.queries_dir,
        snakemake.output.candidates,
    )


run_stage(snakemake.log[0], main)
