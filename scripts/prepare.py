"""Rule prepare: validate corpus, queries and qrels, then tokenize them for the embedding model."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.models import LoadOptions
from negflow.prepare import prepare
from negflow.stage import run_stage


def main(log):
    s = snakemake.params.settings
    tables = {key: snakemake.input.get(key, s.get(key)) for key in ("corpus", "queries", "qrels")}  # else a hub id
    counts = prepare(
        **tables,
        embedding=s["embedding"],
        query_prompt=s["query_prompt"],
        doc_prompt=s["doc_prompt"],
        seq_len=s["embedding_seq_len"],
        min_positive_score=s["min_positive_score"],
        audit_holdout=s["audit_holdout"],
        seed=s.get("seed"),  # only tracked (and used) with audit_holdout
        out_corpus=snakemake.output.corpus,
        out_queries=snakemake.output.queries,
        out_qrels=snakemake.output.qrels,
        out_holdout=snakemake.output.holdout,
        out_manifest=snakemake.output.manifest,
        pairs_manifest=snakemake.input.get("pairs_manifest"),
        workers=snakemake.threads,
        query_prompt_name=s["query_prompt_name"],
        doc_prompt_name=s["doc_prompt_name"],
        options=LoadOptions.of(s, "embedding"),
    )
    log.info("prepared %s", counts)
    return counts


run_stage(snakemake.log[0], main)
