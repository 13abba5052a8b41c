"""Rule export_negatives: select negatives per query; write negatives.jsonl, selection.json and provenance."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.candidates import MinedCandidates
from negflow.export import export_negatives
from negflow.provenance import build_provenance, write_sidecar
from negflow.selection import SelectionSettings
from negflow.stage import run_stage


def main(log):
    settings = snakemake.params.settings
    mined = MinedCandidates(
        mined_path=snakemake.input.mined,
        qrels_path=snakemake.input.qrels,
        corpus_shards=list(snakemake.input.corpus),
        query_shards=list(snakemake.input.queries),
        corpus_dir=snakemake.input.corpus_dir,
        scored_path=snakemake.input.get("scored"),
        selection_score=settings["selection_score"],
        keep_given=settings.get("given_negatives") == "keep",  # only a pairs dataset's export has the key
    )
    report = export_negatives(
        mined,
        SelectionSettings.from_settings(settings),
        out_path=snakemake.output.negatives,
        report_path=snakemake.output.report,
        report_settings=settings,
    )
    provenance = build_provenance(snakemake.input.manifest, snakemake.params.provenance)
    write_sidecar(snakemake.output.negatives, provenance, format="negminer", rows=report["counts"]["queries_written"])


run_stage(snakemake.log[0], main)
