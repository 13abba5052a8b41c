"""Rule train_round: a round's model, fine-tuned on the previous round's negatives."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.finetune import train_round
from negflow.models import BatchLimits, limit_threads
from negflow.stage import run_stage


def main(log):
    limit_threads(snakemake.threads)
    limits = BatchLimits(snakemake.resources.batch_size, snakemake.resources.batch_tokens)
    return train_round(
        snakemake.input, snakemake.params.settings, snakemake.params.start, limits, snakemake.output.model
    )


run_stage(snakemake.log[0], main, gpu_device=snakemake.params.settings["device"])
