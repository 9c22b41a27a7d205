# Packaging, per preset: the quantized state -> model.pgrp (per-group lrzip), the pgolf sources -> the single-file
# train_gpt.py, and the 16 MB check over both. The code rule's params hold the config without `quant` plus this
# preset only, so editing another preset leaves this preset's script (and everything after it) cached.
# Paths and commands come from pgolf/stages.py.


rule pack:
    input:
        **stage_files("pack", "inputs"),
        code=code_inputs("pack"),
    output:
        **stage_files("pack", "outputs"),
    log:
        "logs/pack/{name}/seed{seed}/{preset}.log",
    conda:
        "../envs/pgolf.yaml"
    threads: 8
    resources:
        gpu=GPU_ONE,
    params:
        compressor=config["pack"]["compressor"],
        prune_target=config["pack"].get("prune_target_bytes") or "none",
    shell:
        stage_shell("pack")


rule code:
    input:
        unpack(capfit_inputs("code")),
        code=code_inputs("code"),
    output:
        **stage_files("code", "outputs"),
    log:
        "logs/code/{name}/seed{seed}/{preset}.log",
    localrule: True
    conda:
        "../envs/pgolf.yaml"
    params:
        **preset_config_params("code", code_config),
    shell:
        stage_shell("code")


rule size_check:
    input:
        **stage_files("size_check", "inputs"),
        code=code_inputs("size_check"),
    output:
        **stage_files("size_check", "outputs"),
    log:
        "logs/size_check/{name}/seed{seed}/{preset}.log",
    localrule: True
    conda:
        "../envs/pgolf.yaml"
    shell:
        stage_shell("size_check")
