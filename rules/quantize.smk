# Hessians (GPTQ calibration over the trained model) and quantization, one branch per preset: the preset is the
# {preset} wildcard and the quantize job's params hold that preset alone, so editing one preset re-runs only its
# quantize -> pack -> ... branch while training and the Hessians stay cached. Paths and commands: pgolf/stages.py.


rule hessians:
    input:
        **stage_files("hessians", "inputs"),
        code=code_inputs("hessians"),
    output:
        **stage_files("hessians", "outputs"),
    log:
        "logs/hessians/{name}/seed{seed}.log",
    conda:
        "../envs/pgolf.yaml"
    threads: 4 * RANKS
    resources:
        **gpu_request("hessians"),
    params:
        **config_params("hessians", stage_config("hessians", "hardware")),
        launch=torchrun(),
        ranks=RANKS,
    shell:
        stage_shell("hessians", prefix=OMP_LAUNCH)


rule quantize:
    input:
        unpack(capfit_inputs("quantize")),
        **stage_files("quantize", "inputs"),
        code=code_inputs("quantize"),
    output:
        **stage_files("quantize", "outputs"),
    log:
        "logs/quantize/{name}/seed{seed}/{preset}.log",
    conda:
        "../envs/pgolf.yaml"
    resources:
        gpu=GPU_ONE,
    params:
        **preset_config_params("quantize", quant_config),
    shell:
        stage_shell("quantize")
