"""Rule audit: false-negative rate and hardness of the selected negatives next to the anchors' strategies,
and the embedding model's retrieval quality on audit_qrels."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.audit import audit
from negflow.stage import run_stage


def main(log):
    batch = (snakemake.resources.batch_size, snakemake.resources.batch_tokens)
    report = audit(snakemake.input, snakemake.params.settings, batch, snakemake.output.report)
    return {"queries": report["queries_audited"]}


run_stage(snakemake.log[0], main, gpu_device=snakemake.params.settings["device"])
