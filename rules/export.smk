rule export_negatives:
    input:
        unpack(export_inputs),
        unpack(model_passes),
        code=code_of("export_negatives"),
    output:
        negatives=layout.export_negatives.negatives,
        report=layout.export_negatives.report,
        provenance=layout.export_negatives.provenance,
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
        negatives=rules.export_negatives.output.negatives,
        provenance=rules.export_negatives.output.provenance,
        manifest=prepared("manifest"),
        corpus_dir=prepared("corpus"),
        queries_dir=prepared("queries"),
        code=code_of("export_flag"),
    output:
        data=layout.export_flag.data,
        provenance=layout.export_flag.provenance,
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
        negatives=rules.export_negatives.output.negatives,
        provenance=rules.export_negatives.output.provenance,
        corpus_dir=prepared("corpus"),
        queries_dir=prepared("queries"),
        code=code_of("export_sentence_transformers"),
    output:
        data=layout.export_sentence_transformers.data,
        provenance=layout.export_sentence_transformers.provenance,
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
