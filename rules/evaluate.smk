# Evaluation: the diagnostic score of the trained model (once per seed) and, per preset, the quantized score plus
# the timed phased score-first TTT eval of the packed artifact (docs/design.md, "Evaluation"). The model config
# travels inside the artifact, so params hold only the eval and hardware sections. Paths and commands come from
# pgolf/stages.py.


rule eval_prequant:
    input:
        **stage_files("eval_prequant", "inputs"),
        code=code_inputs("eval_prequant"),
    output:
        **stage_files("eval_prequant", "outputs"),
    log:
        "logs/eval_prequant/{name}/seed{seed}.log",
    conda:
        "../envs/pgolf.yaml"
    threads: RANKS
    resources:
        **gpu_request("eval_prequant"),
    params:
        **config_params("eval", stage_config("eval", "hardware")),
        launch=torchrun(),
    shell:
        stage_shell("eval_prequant", prefix=LAUNCH)


rule evaluate:
    input:
        **stage_files("evaluate", "inputs"),
        code=code_inputs("evaluate"),
    output:
        **stage_files("evaluate", "outputs"),
    log:
        "logs/evaluate/{name}/seed{seed}/{preset}.log",
    conda:
        "../envs/pgolf.yaml"
    threads: RANKS
    resources:
        **gpu_request("evaluate"),
    params:
        **stage_files("evaluate", "params"),
        **config_params("eval", stage_config("eval", "hardware")),
        launch=torchrun(),
    shell:
        stage_shell("evaluate", prefix=LAUNCH)
