"""Rule export_flag: FlagEmbedding fine-tuning JSONL from negatives.jsonl."""

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.files import run_stage
from negflow.provenance import write_sidecar
from negflow.training import iter_examples, write_flag


def main(log):
    provenance = json.loads(Path(snakemake.input.provenance).read_text(encoding="utf-8"))
    layout = snakemake.params.settings["flag_layout"]
    examples = iter_examples(snakemake.input.negatives, snakemake.input.corpus_dir, snakemake.input.queries_dir)
    counts = write_flag(examples, provenance["query_prompt"] or "", layout, snakemake.output.data)
    log.info("FlagEmbedding JSONL: %d rows (%s per line)", counts["rows"], layout)
    shared = {k: v for k, v in provenance.items() if k not in ("file", "sha256", "format", "rows")}
    write_sidecar(snakemake.output.data, shared, format="flag", layout=layout, **counts)


run_stage(snakemake.log[0], main)
