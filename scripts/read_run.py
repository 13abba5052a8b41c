"""Rule read_run: a run file as a candidate source."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.search import per_source
from negflow.sources import read_run
from negflow.stage import run_stage


def main(log):
    settings = snakemake.params.settings
    return read_run(
        snakemake.input.run,
        snakemake.input.queries_dir,
        snakemake.input.corpus_dir,
        snakemake.input.qrels_dir,
        per_source(settings),
        snakemake.output.candidates,
        settings["queries"],
    )


run_stage(snakemake.log[0], main)
