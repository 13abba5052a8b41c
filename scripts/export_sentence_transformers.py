"""Rule export_sentence_transformers: one mine_hard_negatives output format as Parquet."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.provenance import shared_provenance, write_sidecar
from negflow.stage import run_stage
from negflow.training import iter_examples, write_sentence_transformers


def main(log):
    provenance = shared_provenance(snakemake.input.provenance)
    settings = snakemake.params.settings
    fmt = snakemake.wildcards.format
    examples = iter_examples(snakemake.input.negatives, snakemake.input.corpus_dir, snakemake.input.queries_dir)
    counts = write_sentence_transformers(
        examples, fmt, settings["num_negatives"], settings["train_scores"], snakemake.output.data, settings["st_layout"]
    )
    write_sidecar(snakemake.output.data, provenance, format=f"sentence-transformers {fmt}", **counts)
    return counts


run_stage(snakemake.log[0], main)
