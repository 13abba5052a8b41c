"""Rule export_sentence_transformers: one mine_hard_negatives output format as Parquet."""

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.files import run_stage
from negflow.provenance import write_sidecar
from negflow.training import iter_examples, write_sentence_transformers


def main(log):
    provenance = json.loads(Path(snakemake.input.provenance).read_text(encoding="utf-8"))
    settings = snakemake.params.settings
    fmt = snakemake.wildcards.format
    examples = iter_examples(snakemake.input.negatives, snakemake.input.corpus_dir, snakemake.input.queries_dir)
    counts = write_sentence_transformers(
        examples, fmt, settings["num_negatives"], settings["train_scores"], snakemake.output.data
    )
    shared = {k: v for k, v in provenance.items() if k not in ("file", "sha256", "format", "rows")}
    write_sidecar(snakemake.output.data, shared, format=f"sentence-transformers {fmt}", **counts)


run_stage(snakemake.log[0], main)
