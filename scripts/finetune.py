"""Rule finetune: train on the mined negatives and on random ones, report nDCG@10 before and after."""

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.evaluate import load_judgments
from negflow.files import write_json
from negflow.finetune import finetune_report
from negflow.models import BatchLimits, limit_threads
from negflow.stage import run_stage
from negflow.store import read_manifest


def main(log):
    s = snakemake.params.settings
    inp = snakemake.input
    limit_threads(snakemake.threads)
    judged, query_texts = load_judgments(inp.judgments, "finetune")
    manifest = read_manifest(inp.manifest)
    work_dir = tempfile.mkdtemp(prefix=".finetune-", dir=Path(snakemake.output[0]).parent)
    try:
        report = finetune_report(
            inp.negatives,
            inp.corpus_dir,
            inp.queries_dir,
            query_texts,
            judged,
            manifest.query_prompt,
            manifest.doc_prompt,
            s,
            BatchLimits(snakemake.resources.batch_size, snakemake.resources.batch_tokens),
            work_dir,
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    report["settings"] = s
    write_json(snakemake.output[0], report)


run_stage(snakemake.log[0], main, gpu_device=snakemake.params.settings["device"])
