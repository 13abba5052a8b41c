rule index_bm25:
    """The bm25 source's index of the prepared corpus texts, built once per dataset."""
    input:
        corpus_dir=prepared("corpus"),
        code=code_of("index_bm25"),
    output:
        index=directory(layout.index_bm25.index),
    log:
        "logs/index_bm25/{dataset}.log",
    benchmark:
        "benchmarks/index_bm25/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    params:
        settings=settings_for("index_bm25"),
    script:
        "../scripts/index_bm25.py"


rule search_bm25:
    """BM25 candidates of one shard of the queries (the dense search's query shards)."""
    input:
        index=rules.index_bm25.output.index,
        corpus_dir=prepared("corpus"),
        queries_dir=prepared("queries"),
        qrels_dir=prepared("qrels"),
        code=code_of("search_bm25"),
    output:
        candidates=layout.search_bm25.candidates,
    log:
        "logs/search_bm25/{dataset}.{scatteritem}.log",
    benchmark:
        "benchmarks/search_bm25/{dataset}.{scatteritem}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 2
    params:
        settings=settings_for("search_bm25"),
    script:
        "../scripts/search_bm25.py"


rule merge_bm25_candidates:
    input:
        shards=bm25_shards,
        code=code_of("merge_candidates"),
    output:
        candidates=layout.merge_bm25_candidates.candidates,
    log:
        "logs/merge_bm25_candidates/{dataset}.log",
    conda:
        "../envs/negflow.yaml"
    script:
        "../scripts/merge_candidates.py"
