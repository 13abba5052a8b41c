rule export_negatives:
    input:
        unpack(export_inputs),
        code=library("export", "selection"),
    output:
        "results/{dataset}/negatives.jsonl",
    log:
        "logs/export_negatives/{dataset}.log",
    benchmark:
        "benchmarks/export_negatives/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    params:
        settings=settings_for("export"),
    script:
        "../scripts/export_negatives.py"
