rule search:
    input:
        corpus=embedding_shards("corpus"),
        queries=embedding_shards("queries"),
        corpus_dir="results/{dataset}/prepare/corpus",
        queries_dir="results/{dataset}/prepare/queries",
        qrels_dir="results/{dataset}/prepare/qrels",
        code=library("search"),
    output:
        mined="results/{dataset}/search/mined_qrels.parquet",
        qrels="results/{dataset}/search/qrels_cosine.parquet",
    log:
        "logs/search/{dataset}.log",
    benchmark:
        "benchmarks/search/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 8
    resources:
        batch_size=setting("search_batch_size"),
    params:
        settings=settings_for("search"),
    script:
        "../scripts/search.py"
