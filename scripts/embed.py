"""Rule embed: embed one shard of the tokenized corpus or queries into an .npy of unit vectors."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.embed import embed_shard
from negflow.files import run_stage
from negflow.models import limit_threads


def main(log):
    s = snakemake.params.settings
    limit_threads(snakemake.threads)
    embed_shard(
        dataset_dir=snakemake.input.dataset,
        shard=snakemake.wildcards.scatteritem,
        model_ref=s["embedding"],
        seq_len=s["embedding_seq_len"],
        dtype_setting=s["embedding_dtype"],
        device_setting=s["device"],
        batch_size=snakemake.resources.batch_size,
        out_path=snakemake.output[0],
    )


run_stage(snakemake.log[0], main, gpu_device=snakemake.params.settings["device"])
