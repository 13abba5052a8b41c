rule prepare:
    input:
        unpack(local_inputs),
    output:
        corpus=directory("results/{dataset}/prepare/corpus"),
        queries=directory("results/{dataset}/prepare/queries"),
        qrels=directory("results/{dataset}/prepare/qrels"),
    params:
        settings=settings_for("prepare"),
    threads: 4
    log:
        "logs/prepare/{dataset}.log",
    benchmark:
        "benchmarks/prepare/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    script:
        "../scripts/prepare.py"
