rule prepare:
    input:
        unpack(prepare_inputs),
        code=code_of("prepare"),
    output:
        corpus=directory("results/{dataset}/prepare/corpus"),
        queries=directory("results/{dataset}/prepare/queries"),
        qrels=directory("results/{dataset}/prepare/qrels"),
        holdout="results/{dataset}/prepare/holdout.parquet",
        manifest="results/{dataset}/prepare/manifest.json",
    log:
        "logs/prepare/{dataset}.log",
    benchmark:
        "benchmarks/prepare/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 4
    params:
        settings=settings_for("prepare"),
    script:
        "../scripts/prepare.py"
