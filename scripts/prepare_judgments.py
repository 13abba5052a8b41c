"""Rule prepare_judgments: the audit's and finetune's qrels, checked and stored beside the prepared corpus;
the corpus checked to hold more documents than `candidates`."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.judgments import prepare_judgments
from negflow.stage import run_stage


def main(log):
    s = snakemake.params.settings
    qrels = {"audit": s["audit_qrels"], "finetune": s["finetune_eval_qrels"]}
    queries = snakemake.input.get("queries", s.get("queries"))  # else a hub id
    corpus = snakemake.input.corpus_dir
    counts = prepare_judgments(qrels, queries, corpus, snakemake.output.judgments, s["candidates"])
    return {"judgments": sum(counts.values())}


run_stage(snakemake.log[0], main)
