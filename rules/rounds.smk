rule train_round:
    """Round R >= 2 of a dataset with `rounds`: its model, fine-tuned on round R-1's negatives."""
    input:
        unpack(training_inputs),
        code=code_of("train_round"),
    output:
        model=directory(layout.train_round.model),
    log:
        "logs/train_round/{dataset}.log",
    benchmark:
        "benchmarks/train_round/{dataset}.tsv"
    wildcard_constraints:
        dataset=layout.ROUND_WILDCARD,
    conda:
        "../envs/negflow.yaml"
    threads: 8
    resources:
        gpu=1,
        batch_size=job_setting("embedding_batch_size"),
        batch_tokens=job_setting("embedding_batch_tokens"),
    params:
        settings=settings_for("train_round"),
        start=training_start_of,
    script:
        "../scripts/train_round.py"


rule take_last_round:
    """A dataset with rounds: its negatives, selection report and provenance are its last round's."""
    input:
        negatives=lambda w: of_dataset(rules.export_negatives.output.negatives, w),
        report=lambda w: of_dataset(rules.export_negatives.output.report, w),
        provenance=lambda w: of_dataset(rules.export_negatives.output.provenance, w),
        code=code_of("take_last_round"),
    output:
        negatives=layout.export_negatives.negatives,
        report=layout.export_negatives.report,
        provenance=layout.export_negatives.provenance,
    log:
        "logs/take_last_round/{dataset}.log",
    wildcard_constraints:
        dataset=ROUNDED_DATASETS,
    conda:
        "../envs/negflow.yaml"
    script:
        "../scripts/take_last_round.py"


rule take_last_audit:
    """A dataset with rounds: its audit is its last round's (that round's model and negatives)."""
    input:
        report=lambda w: of_dataset(rules.audit.output.report, w),
        code=code_of("take_last_round"),
    output:
        report=layout.audit.report,
    log:
        "logs/take_last_audit/{dataset}.log",
    wildcard_constraints:
        dataset=ROUNDED_DATASETS,
    conda:
        "../envs/negflow.yaml"
    script:
        "../scripts/take_last_round.py"


ruleorder: take_last_round > export_negatives
ruleorder: take_last_audit > audit
