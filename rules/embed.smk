rule embed:
    input:
        dataset="results/{dataset}/prepare/{part}",
    output:
        "results/{dataset}/embed/{part}/{shard}.npy",
    wildcard_constraints:
        part="corpus|queries",
        shard=r"\d+-of-\d+",
    params:
        settings=settings_for("embed"),
    threads: 8
    resources:
        gpu=1,
        batch_size=setting("embedding_batch_size"),
    log:
        "logs/embed/{dataset}.{part}.{shard}.log",
    benchmark:
        "benchmarks/embed/{dataset}.{part}.{shard}.tsv"
    conda:
        "../envs/negflow.yaml"
    script:
        "../scripts/embed.py"
