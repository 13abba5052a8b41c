rule score_pairs:
    input:
        pairs="results/{dataset}/score_prepare/pairs",
        code=library("pairs", "models"),
    output:
        "results/{dataset}/score/scored_qrels.parquet",
    log:
        "logs/score_pairs/{dataset}.log",
    benchmark:
        "benchmarks/score_pairs/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 8
    resources:
        gpu=1,
        batch_size=setting("ce_batch_size"),
    params:
        settings=settings_for("score_pairs"),
    script:
        "../scripts/score_pairs.py"
