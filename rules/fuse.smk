rule read_run:
    """A run file as a candidate source: its best documents per query, checked against the dataset."""
    input:
        run=run_file,
        corpus_dir=prepared("corpus"),
        queries_dir=prepared("queries"),
        qrels_dir=prepared("qrels"),
        code=code_of("read_run"),
    output:
        candidates=layout.read_run.candidates,
    log:
        "logs/read_run/{dataset}.{source}.log",
    conda:
        "../envs/negflow.yaml"
    params:
        settings=settings_for("read_run"),
    script:
        "../scripts/read_run.py"


rule fuse_candidates:
    """Every source's candidates, one list per query by reciprocal rank fusion, with exact cosines."""
    input:
        unpack(source_tables),
        corpus=embedding_shards("corpus"),
        queries=embedding_shards("queries"),
        corpus_dir=prepared("corpus"),
        queries_dir=prepared("queries"),
        code=code_of("fuse_candidates"),
    output:
        candidates=layout.fuse_candidates.candidates,
    log:
        "logs/fuse_candidates/{dataset}.log",
    benchmark:
        "benchmarks/fuse_candidates/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    params:
        settings=settings_for("fuse_candidates"),
    script:
        "../scripts/fuse_candidates.py"
