rule prepare_ce_pairs:
    input:
        candidates=candidate_table,
        qrels=rules.compute_qrels_cosines.output.cosines,
        corpus_dir=prepared("corpus"),
        queries_dir=prepared("queries"),
        code=code_of("prepare_ce_pairs"),
    output:
        pairs=directory(layout.prepare_ce_pairs.pairs),
    log:
        "logs/prepare_ce_pairs/{dataset}.log",
    benchmark:
        "benchmarks/prepare_ce_pairs/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 4
    params:
        settings=settings_for("prepare_ce_pairs"),
    script:
        "../scripts/prepare_ce_pairs.py"


rule score_pairs:
    input:
        pairs=rules.prepare_ce_pairs.output.pairs,
        code=code_of("score_pairs"),
    output:
        scores=layout.score_pairs.scores,
        model_pass=layout.score_pairs.model_pass,
    log:
        "logs/score_pairs/{dataset}.{scatteritem}.log",
    benchmark:
        "benchmarks/score_pairs/{dataset}.{scatteritem}.tsv"
    conda:
        "../envs/negflow.yaml"
    threads: 8
    resources:
        gpu=1,
        batch_size=job_setting("ce_batch_size"),
        batch_tokens=job_setting("ce_batch_tokens"),
    params:
        settings=settings_for("score_pairs"),
    script:
        "../scripts/score_pairs.py"


rule merge_scores:
    input:
        shards=score_shards,
        code=code_of("merge_scores"),
    output:
        scores=layout.merge_scores.scores,
    log:
        "logs/merge_scores/{dataset}.log",
    conda:
        "../envs/negflow.yaml"
    script:
        "../scripts/merge_scores.py"
