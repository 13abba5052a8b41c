rule export_negatives:
    input:
        unpack(export_inputs),
    output:
        "results/{dataset}/negatives.jsonl",
    params:
        settings=settings_for("export"),
    log:
        "logs/export_negatives/{dataset}.log",
    benchmark:
        "benchmarks/export_negatives/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    script:
        "../scripts/export_negatives.py"
