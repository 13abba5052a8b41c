rule embed:
    input:
        dataset="results/{dataset}/prepare/{part}",
        code=library("embed", "models"),
    output:
        "results/{dataset}/embed/{part}/{shard}.npy",
    log:
        "logs/embed/{dataset}.{part}.{shard}.log",
    benchmark:
        "benchmarks/embed/{dataset}.{part}.{shard}.tsv"
    wildcard_constraints:
        part="corpus|queries",
        shard=r"\d+-of-\d+",
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
