# The submission: the records folder of the submission preset over every seed (the default target).
# Paths and the command come from pgolf/stages.py.


rule submission:
    input:
        unpack(submission_inputs),
        code=code_inputs("submission"),
    output:
        multiext(
            stage_path("submission_dir") + "/",
            *STAGES.SUBMISSION_FILES,
        ),
    log:
        "logs/submission/{name}.log",
    localrule: True
    conda:
        "../envs/pgolf.yaml"
    params:
        **stage_files("submission", "params"),
        **config_params(
            "submission",
            stage_config("run", "hardware", "submission", "audit", "data"),
        ),
    shell:
        stage_shell("submission")
