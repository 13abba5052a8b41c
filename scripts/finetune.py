"""Rule finetune: train on the mined negatives and on random ones, report nDCG@10 before and after."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.finetune import finetune
from negflow.models import BatchLimits, limit_threads
from negflow.stage import run_stage


def main(log):
    limit_threads(snakemake.threads)
    limits = BatchLimits(snakemake.resources.batch_size, snakemake.resources.batch_tokens)
    finetune(snakemake.input, snakemake.params.settings, limits, snakemake.output.report)


run_stage(snakemake.log[0], main, gpu_device=snakemake.params.settings["device"])
