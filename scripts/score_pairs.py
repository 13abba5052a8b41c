"""Rule score_pairs: score the tokenized pairs with the cross-encoder."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.models import BatchLimits, LoadOptions, limit_threads
from negflow.score import score_pairs
from negflow.stage import run_stage


def main(log):
    s = snakemake.params.settings
    limit_threads(snakemake.threads)
    pairs = score_pairs(
        pairs_dir=snakemake.input.pairs,
        ce_ref=s["ce"],
        seq_len=s["ce_seq_len"],
        dtype_setting=s["ce_dtype"],
        device_setting=s["device"],
        limits=BatchLimits(snakemake.resources.batch_size, snakemake.resources.batch_tokens),
        out_path=snakemake.output.scores,
        shard=snakemake.wildcards.scatteritem,
        options=LoadOptions.of(s, "ce"),
        pass_path=snakemake.output.model_pass,
    )
    return {"pairs": pairs}


run_stage(snakemake.log[0], main, gpu_device=snakemake.params.settings["device"])
