rule finetune:
    """Opt-in proof stage (not part of `all`): request results/NAME/finetune/report.json."""
    input:
        unpack(finetune_inputs),
        code=code_of("finetune"),
    output:
        "results/{dataset}/finetune/report.json",
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
