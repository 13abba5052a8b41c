rule prepare:
    input:
        unpack(prepare_inputs),
        code=code_of("prepare"),
    output:
        corpus=directory(layout.prepare.corpus),
        queries=directory(layout.prepare.queries),
        qrels=directory(layout.prepare.qrels),
        holdout=layout.prepare.holdout,
        manifest=layout.prepare.manifest,
    log:
        "logs/prepare/{dataset}.log",
    benchmark:
        "benchmarks/prepare/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 4
    params:
        settings=settings_for("prepare"),
    script:
        "../scripts/prepare.py"


rule prepare_judgments:
    """The audit's and finetune's qrels checked against the prepared corpus and stored with their queries'
    texts, and the corpus checked against `candidates`; embed waits for it (as ancient, so a new file reruns
    no embedding), so a bad file or a corpus too small stops the run before any model stage.
    """
    input:
        unpack(judgment_inputs),
        code=code_of("prepare_judgments"),
    output:
        judgments=layout.prepare_judgments.judgments,
    log:
        "logs/prepare_judgments/{dataset}.log",
    conda:
        "../envs/negflow.yaml"
    params:
        settings=settings_for("prepare_judgments"),
    script:
        "../scripts/prepare_judgments.py"
