rule plot_report:
    input:
        negatives=rules.export_negatives.output.negatives,
        selection=rules.export_negatives.output.report,
        candidates=candidate_table,
        corpus_dir=prepared("corpus"),
        queries_dir=prepared("queries"),
        code=code_of("plot_report"),
    output:
        summary=report(
            layout.plot_report.summary,
            caption="../report/summary.rst",
            category="{dataset}",
            labels={"dataset": "{dataset}", "figure": "counts and drops"},
        ),
        scores=report(
            layout.plot_report.scores,
            caption="../report/scores.rst",
            category="{dataset}",
            labels={"dataset": "{dataset}", "figure": "score histograms"},
        ),
        ranks=report(
            layout.plot_report.ranks,
            caption="../report/ranks.rst",
            category="{dataset}",
            labels={"dataset": "{dataset}", "figure": "negative ranks"},
        ),
        examples=report(
            layout.plot_report.examples,
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


rule plot_calibration:
    input:
        calibration=lambda wildcards: of_dataset(
            rules.calibrate_selection.output.calibration, wildcards
        ),
        code=code_of("plot_calibration"),
    output:
        figure=report(
            layout.plot_calibration.figure,
            caption="../report/calibration.rst",
            category="{dataset}",
            labels={
                "dataset": "{dataset}",
                "figure": "false negatives against hardness",
            },
        ),
    log:
        "logs/plot_calibration/{dataset}.log",
    conda:
        "../envs/negflow.yaml"
    script:
        "../scripts/plot_calibration.py"


rule plot_rounds:
    """A dataset with rounds: each round's negatives, candidates and audit side by side."""
    input:
        unpack(rounds_inputs),
        code=code_of("plot_rounds"),
    output:
        summary=layout.plot_rounds.summary,
        figure=report(
            layout.plot_rounds.figure,
            caption="../report/rounds.rst",
            category="{dataset}",
            labels={"dataset": "{dataset}", "figure": "rounds"},
        ),
    log:
        "logs/plot_rounds/{dataset}.log",
    conda:
        "../envs/negflow.yaml"
    script:
        "../scripts/plot_rounds.py"
