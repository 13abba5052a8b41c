rule export_negatives:
    input:
        unpack(export_inputs),
        code=code_of("export_negatives"),
    output:
        negatives="results/{dataset}/negatives.jsonl",
        report="results/{dataset}/selection.json",
        provenance="results/{dataset}/negatives.provenance.json",
    log:
        "logs/export_negatives/{dataset}.log",
    benchmark:
        "benchmarks/export_negatives/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    params:
        settings=settings_for("export_negatives"),
        provenance=provenance_for,
    script:
        "../scripts/export_negatives.py"


rule export_flag:
    input:
        negatives="results/{dataset}/negatives.jsonl",
        provenance="results/{dataset}/negatives.provenance.json",
        manifest="results/{dataset}/prepare/manifest.json",
        corpus_dir="results/{dataset}/prepare/corpus",
        queries_dir="results/{dataset}/prepare/queries",
        code=code_of("export_flag"),
    output:
        data="results/{dataset}/train/flag.jsonl",
        provenance="results/{dataset}/train/flag.provenance.json",
    log:
        "logs/export_flag/{dataset}.log",
    conda:
        "../envs/negflow.yaml"
    params:
        settings=settings_for("export_flag"),
    script:
        "../scripts/export_flag.py"


rule export_sentence_transformers:
    input:
        negatives="results/{dataset}/negatives.jsonl",
        provenance="results/{dataset}/negatives.provenance.json",
        corpus_dir="results/{dataset}/prepare/corpus",
        queries_dir="results/{dataset}/prepare/queries",
        code=code_of("export_sentence_transformers"),
    output:
        data="results/{dataset}/train/{format}.parquet",
        provenance="results/{dataset}/train/{format}.provenance.json",
    log:
        "logs/export_sentence_transformers/{dataset}.{format}.log",
    wildcard_constraints:
        format="triplet|n-tuple|labeled-pair|labeled-list",
    conda:
        "../envs/negflow.yaml"
    params:
        settings=settings_for("export_sentence_transformers"),
    script:
        "../scripts/export_sentence_transformers.py"
