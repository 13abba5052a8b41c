"""negflow: mine hard negatives for embedding-model training (prepare -> embed -> search -> score -> export)."""

import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/prepare.smk"
include: "rules/embed.smk"
include: "rules/search.smk"
include: "rules/score_prepare.smk"
include: "rules/score.smk"
include: "rules/export.smk"
include: "rules/audit.smk"
include: "rules/finetune.smk"


localrules:
    all,
    make_demo_dataset,


rule all:
    default_target: True
    input:
        all_outputs(),
