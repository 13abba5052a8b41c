rule read_pairs:
    """A pairs dataset: its pair file (and optional corpus) as the BEIR tables prepare reads, plus an id
    map from every query to its source lines and from every document to its text hash.
    """
    input:
        unpack(pair_inputs),
        code=code_of("read_pairs"),
    output:
        corpus=layout.read_pairs.corpus,
        queries=layout.read_pairs.queries,
        qrels=layout.read_pairs.qrels,
        query_lines=layout.read_pairs.query_lines,
        doc_hashes=layout.read_pairs.doc_hashes,
        manifest=layout.read_pairs.manifest,
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
