"""negflow: mine hard negatives for embedding-model training (prepare -> embed -> search -> score -> export)."""

import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    dataset=layout.DATASET_WILDCARD,
    scatteritem=SHARD_PATTERN,
    source=r"run_\w+",


# Shard counts (config `scatter`, or `--set-scatter embed=8` for one run).
scattergather:
    **SCATTER,


include: "rules/demo.smk"
include: "rules/read_pairs.smk"
include: "rules/prepare.smk"
include: "rules/embed.smk"
include: "rules/search.smk"
include: "rules/bm25.smk"
include: "rules/fuse.smk"
include: "rules/score.smk"
include: "rules/calibrate.smk"
include: "rules/export.smk"
include: "rules/audit.smk"
include: "rules/finetune.smk"
include: "rules/rounds.smk"
include: "rules/report.smk"


localrules:
    all,
    make_demo_dataset,
    take_last_round,
    take_last_audit,


rule all:
    default_target: True
    input:
        all_outputs(),


onsuccess:
    cancel_scheduler_timers()


onerror:
    cancel_scheduler_timers()
