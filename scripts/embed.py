"""Rule embed: embed one shard of the tokenized corpus and of the queries into .npy files of unit vectors."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.embed import embed_shard
from negflow.models import BatchLimits, LoadOptions, limit_threads
from negflow.stage import run_stage


def main(log):
    s = snakemake.params.settings
    limit_threads(snakemake.threads)
    rows = embed_shard(
        parts=[
            (snakemake.input.corpus, snakemake.output.corpus),
            (snakemake.input.queries, snakemake.output.queries),
        ],
        shard=snakemake.wildcards.scatteritem,
        model_ref=s["embedding"],
        seq_len=s["embedding_seq_len"],
        dtype_setting=s["embedding_dtype"],
        device_setting=s["device"],
        limits=BatchLimits(snakemake.resources.batch_size, snakemake.resources.batch_tokens),
        options=LoadOptions.of(s, "embedding"),
        truncate_dim=s["truncate_dim"],
        pass_path=snakemake.output.model_pass,
        prepared_manifest=snakemake.input.manifest,
    )
    return {"documents": rows[snakemake.output.corpus], "queries": rows[snakemake.output.queries]}


run_stage(snakemake.log[0], main, gpu_device=snakemake.params.settings["device"])
