"""Rule export_negatives: select negatives per query and write negatives.jsonl."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.export import export_negatives
from negflow.files import run_stage


def main(log):
    export_negatives(
        mined_path=snakemake.input.mined,
        qrels_path=snakemake.input.qrels,
        corpus_shards=list(snakemake.input.corpus),
        scored_path=snakemake.input.get("scored"),
        settings=snakemake.params.settings,
        out_path=snakemake.output[0],
    )


run_stage(snakemake.log[0], main)
