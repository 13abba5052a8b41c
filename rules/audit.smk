rule audit:
    input:
        unpack(audit_inputs),
        code=library("audit", "evaluate", "export", "selection", "embed", "models"),
    output:
        "results/{dataset}/audit.json",
    log:
        "logs/audit/{dataset}.log",
    benchmark:
        "benchmarks/audit/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    resources:
        gpu=1,
        batch_size=setting("embedding_batch_size"),
        batch_tokens=setting("embedding_batch_tokens"),
    params:
        settings=settings_for("audit"),
    script:
        "../scripts/audit.py"
