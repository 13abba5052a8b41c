rule train_index:
    input:
        corpus=embedding_shards("corpus"),
        code=code_of("train_index"),
    output:
        trained=layout.train_index.trained,
    log:
        "logs/train_index/{dataset}.log",
    benchmark:
        "benchmarks/train_index/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 8
    params:
        settings=settings_for("train_index"),
    script:
        "../scripts/train_index.py"


rule add_to_index:
    input:
        trained=rules.train_index.output.trained,
        corpus=embedding_shards("corpus"),
        code=code_of("add_to_index"),
    output:
        part=layout.add_to_index.part,
    log:
        "logs/add_to_index/{dataset}.{scatteritem}.log",
    benchmark:
        "benchmarks/add_to_index/{dataset}.{scatteritem}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 8
    script:
        "../scripts/add_to_index.py"


rule build_index:
    input:
        unpack(index_inputs),
        code=code_of("build_index"),
    output:
        index=layout.build_index.index,
    log:
        "logs/build_index/{dataset}.log",
    benchmark:
        "benchmarks/build_index/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 8
    params:
        settings=settings_for("build_index"),
    script:
        "../scripts/build_index.py"


rule search:
    input:
        corpus=embedding_shards("corpus"),
        queries=embedding_shards("queries"),
        index=search_index,
        corpus_dir=prepared("corpus"),
        queries_dir=prepared("queries"),
        qrels_dir=prepared("qrels"),
        code=code_of("search"),
    output:
        candidates=layout.search.candidates,
    log:
        "logs/search/{dataset}.{scatteritem}.log",
    benchmark:
        "benchmarks/search/{dataset}.{scatteritem}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 8
    resources:
        batch_size=job_setting("search_batch_size"),
    params:
        settings=settings_for("search"),
    script:
        "../scripts/search.py"


rule merge_candidates:
    input:
        shards=candidate_shards,
        code=code_of("merge_candidates"),
    output:
        candidates=layout.merge_candidates.candidates,
    log:
        "logs/merge_candidates/{dataset}.log",
    conda:
        "../envs/negflow.yaml"
    script:
        "../scripts/merge_candidates.py"


rule compute_qrels_cosines:
    input:
        corpus=embedding_shards("corpus"),
        queries=embedding_shards("queries"),
        queries_dir=prepared("queries"),
        qrels_dir=prepared("qrels"),
        code=code_of("compute_qrels_cosines"),
    output:
        cosines=layout.compute_qrels_cosines.cosines,
    log:
        "logs/compute_qrels_cosines/{dataset}.log",
    conda:
        "../envs/negflow.yaml"
    script:
        "../scripts/compute_qrels_cosines.py"
