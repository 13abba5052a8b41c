rule finetune:
    """Opt-in proof stage (not part of `all`): ask for its report (layout.finetune.report) as a target."""
    input:
        unpack(finetune_inputs),
        code=code_of("finetune"),
    output:
        report=layout.finetune.report,
    log:
        "logs/finetune/{dataset}.log",
    benchmark:
        "benchmarks/finetune/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 8
    resources:
        gpu=1,
        batch_size=job_setting("embedding_batch_size"),
        batch_tokens=job_setting("embedding_batch_tokens"),
    params:
        settings=settings_for("finetune"),
    script:
        "../scripts/finetune.py"
