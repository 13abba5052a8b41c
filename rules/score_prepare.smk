rule prepare_pairs:
    input:
        mined="results/{dataset}/search/candidates.parquet",
        qrels="results/{dataset}/search/qrels_cosine.parquet",
        corpus_dir="results/{dataset}/prepare/corpus",
        queries_dir="results/{dataset}/prepare/queries",
        code=code_of("prepare_pairs"),
    output:
        directory("results/{dataset}/score_prepare/pairs"),
    log:
        "logs/prepare_pairs/{dataset}.log",
    benchmark:
        "benchmarks/prepare_pairs/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 4
    params:
        settings=settings_for("prepare_pairs"),
    script:
        "../scripts/prepare_pairs.py"
