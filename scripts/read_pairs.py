"""Rule read_pairs: a pair file (and optional corpus) as BEIR tables, with an id map to the source lines."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakemake.script import snakemake

from negflow.pair_shapes import PairSettings
from negflow.read_pairs import PairTables, read_pairs
from negflow.stage import run_stage


def main(log):
    s = snakemake.params.settings
    result = read_pairs(
        s["pairs"],
        s["corpus"],
        PairSettings.from_settings(s),
        PairTables(**{name: snakemake.output[name] for name in PairTables.__dataclass_fields__}),
    )
    return result["counts"]


run_stage(snakemake.log[0], main)
