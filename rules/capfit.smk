# Cap-fit (quant.capfit.enabled): the bit allocation with the lowest Hessian-weighted error whose exact size fits
# quant.capfit.target_bytes, written as the preset `capfit`: preset.json and the quantize and code jobs' --config
# files, which those rules pass for this preset. Its params hold quant.capfit, the base preset and what the
# submission script carries, so editing the search space re-runs capfit and the capfit branch after it, never training or the Hessians.


rule capfit:
    input:
        **stage_files("capfit", "inputs"),
        code=code_inputs("capfit"),
    output:
        **stage_files("capfit", "outputs"),
    log:
        "logs/capfit/{name}/seed{seed}.log",
    conda:
        "../envs/pgolf.yaml"
    threads: 8
    resources:
        gpu=min(config["hardware"]["gpus"], 1),
    params:
        **config_params("capfit", capfit_config()),
    shell:
        stage_shell("capfit")
