"""Rule export_flag: FlagEmbedding fine-tuning JSONL from negatives.jsonl."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.provenance import shared_provenance, write_sidecar
from negflow.stage import run_stage
from negflow.store import read_manifest
from negflow.training import iter_examples, write_flag


def main(log):
    provenance = shared_provenance(snakemake.input.provenance)
    layout = snakemake.params.settings["flag_layout"]
    examples = iter_examples(snakemake.input.negatives, snakemake.input.corpus_dir, snakemake.input.queries_dir)
    prompt = read_manifest(snakemake.input.manifest).query_prompt or ""
    counts = write_flag(examples, prompt, layout, snakemake.output.data)
    log.info("FlagEmbedding JSONL: %d rows (%s per line)", counts["rows"], layout)
    write_sidecar(snakemake.output.data, provenance, format="flag", layout=layout, **counts)
    return counts


run_stage(snakemake.log[0], main)
