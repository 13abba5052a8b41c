"""Rule export_negatives: select negatives per query; write negatives.jsonl, selection.json and provenance."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.calibration import read_choice
from negflow.candidates import Candidates
from negflow.export import export_negatives
from negflow.provenance import build_provenance, write_sidecar
from negflow.stage import run_stage


def main(log):
    settings = snakemake.params.settings
    selection, calibration = read_choice(snakemake.input, settings)
    report = export_negatives(
        Candidates.from_inputs(snakemake.input, settings),
        selection,
        out_path=snakemake.output.negatives,
        report_path=snakemake.output.report,
        report_settings=settings,
        calibration=calibration,
    )
    provenance = build_provenance(snakemake.input, snakemake.params.provenance, calibration)
    write_sidecar(snakemake.output.negatives, provenance, format="negminer", rows=report["counts"]["queries_written"])
    return report["counts"]


run_stage(snakemake.log[0], main)
