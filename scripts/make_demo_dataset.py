"""Rule make_demo_dataset: build the offline demo set from standard-library docstrings."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.demo import build_docstring_dataset, write_beir
from negflow.stage import run_stage


def main(log):
    data = build_docstring_dataset()
    write_beir(data, snakemake.output.corpus, snakemake.output.queries, snakemake.output.qrels)
    log.info("demo set: %d documents, %d queries", len(data["corpus"]), len(data["queries"]))
    return {"documents": len(data["corpus"]), "queries": len(data["queries"])}


run_stage(snakemake.log[0], main)
