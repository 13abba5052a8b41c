rule read_pairs:
    """A pairs dataset: its pair file (and optional corpus) as the BEIR tables prepare reads, plus an id
    map from every query to its source lines and from every document to its text hash.
    """
    input:
        unpack(pair_inputs),
        code=code_of("read_pairs"),
    output:
        corpus="results/{dataset}/read_pairs/corpus.parquet",
        queries="results/{dataset}/read_pairs/queries.parquet",
        qrels="results/{dataset}/read_pairs/qrels.parquet",
        query_lines="results/{dataset}/read_pairs/query_lines.parquet",
        doc_hashes="results/{dataset}/read_pairs/doc_hashes.parquet",
        manifest="results/{dataset}/read_pairs/manifest.json",
    log:
        "logs/read_pairs/{dataset}.log",
    benchmark:
        "benchmarks/read_pairs/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    params:
        settings=settings_for("read_pairs"),
    script:
        "../scripts/read_pairs.py"
