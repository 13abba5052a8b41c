rule make_demo_dataset:
    input:
        code=code_of("make_demo_dataset"),
    output:
        corpus="resources/demo/corpus.jsonl",
        queries="resources/demo/queries.jsonl",
        qrels="resources/demo/qrels/test.tsv",
    log:
        "logs/make_demo_dataset/demo.log",
    conda:
        "../envs/negflow.yaml"
    script:
        "../scripts/make_demo_dataset.py"
