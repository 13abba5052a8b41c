rule embed:
    input:
        dataset="results/{dataset}/prepare/{part}",
        code=library("embed", "models"),
    output:
        "results/{dataset}/embed/{part}/{scatteritem}.npy",
    log:
        "logs/embed/{dataset}.{part}.{scatteritem}.log",
    benchmark:
        "benchmarks/embed/{dataset}.{part}.{scatteritem}.tsv"
    wildcard_constraints:
        part="corpus|queries",
        scatteritem=r"\d+-of-\d+",
    conda:
        "../envs/negflow.yaml"
    threads: 8
    resources:
        gpu=1,
        batch_size=setting("embedding_batch_size"),
    params:
        settings=settings_for("embed"),
    script:
        "../scripts/embed.py"
