rule calibrate_selection:
    input:
        unpack(selection_inputs),
        code=code_of("calibrate_selection"),
    output:
        calibration=layout.calibrate_selection.calibration,
    log:
        "logs/calibrate_selection/{dataset}.log",
    benchmark:
        "benchmarks/calibrate_selection/{dataset}.tsv"
    conda:
        "../envs/negflow.yaml"
    params:
        settings=settings_for("calibrate_selection"),
    script:
        "../scripts/calibrate_selection.py"
