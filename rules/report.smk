rule plot_report:
    input:
        negatives="results/{dataset}/negatives.jsonl",
        selection="results/{dataset}/selection.json",
        candidates="results/{dataset}/search/candidates.parquet",
        corpus_dir="results/{dataset}/prepare/corpus",
        queries_dir="results/{dataset}/prepare/queries",
        code=code_of("plot_report"),
    output:
        summary=report(
            "results/{dataset}/report/summary.html",
            caption="../report/summary.rst",
            category="{dataset}",
            labels={"dataset": "{dataset}", "figure": "counts and drops"},
        ),
        scores=report(
            "results/{dataset}/report/scores.png",
            caption="../report/scores.rst",
            category="{dataset}",
            labels={"dataset": "{dataset}", "figure": "score histograms"},
        ),
        ranks=report(
            "results/{dataset}/report/ranks.png",
            caption="../report/ranks.rst",
            category="{dataset}",
            labels={"dataset": "{dataset}", "figure": "negative ranks"},
        ),
        examples=report(
            "results/{dataset}/report/examples.html",
            caption="../report/examples.rst",
            category="{dataset}",
            labels={"dataset": "{dataset}", "figure": "example queries"},
        ),
    log:
        "logs/plot_report/{dataset}.log",
    conda:
        "../envs/negflow.yaml"
    params:
        candidates=job_setting("candidates"),
    script:
        "../scripts/plot_report.py"
