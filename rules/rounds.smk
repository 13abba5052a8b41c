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
