rule embed:
    """Shard I-of-N of the corpus and of the queries in one job: the model is loaded once per shard."""
    input:
        unpack(round_model_input),
        corpus=prepared("corpus"),
        queries=prepared("queries"),
        manifest=prepared("manifest"),
        # an input function of its own: ancient() flags the very object it is given, and on the rule's own output
        # it would keep the judgments' other readers (audit, finetune) from rerunning after them
        judgments=ancient(prepared("judgments", "prepare_judgments")),
        code=code_of("embed"),
    output:
        corpus=layout.embed.corpus,
        queries=layout.embed.queries,
        model_pass=layout.embed.model_pass,
    log:
        "logs/embed/{dataset}.{scatteritem}.log",
    benchmark:
        "benchmarks/embed/{dataset}.{scatteritem}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 8
    resources:
        gpu=1,
        batch_size=job_setting("embedding_batch_size"),
        batch_tokens=job_setting("embedding_batch_tokens"),
    params:
        settings=settings_for("embed"),
    script:
        "../scripts/embed.py"
