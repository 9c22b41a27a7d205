# Cap-fit (quant.capfit.enabled): the bit allocation with the lowest Hessian-weighted error whose exact size fits
# quant.capfit.target_bytes, written as the preset `capfit` (preset.json), which the quantize and code rules read
# like any other preset. Its params hold quant.capfit, the base preset and what the submission script carries, so
# editing the search space re-runs capfit and the capfit branch after it, never training or the Hessians.


rule capfit:
    input:
        model="results/{name}/seed{seed}/train/model.pt",
        hessians="results/{name}/seed{seed}/train/hessians.pt",
        code=module_files(
            "capfit", "quantize", "pack", "sizecheck", "codepack", *QUANT_MODULES
        ),
        sources=package_sources(),
    output:
        preset="results/{name}/seed{seed}/quant/capfit/preset.json",
        report="results/{name}/seed{seed}/quant/capfit/capfit.json",
    log:
        "logs/capfit/{name}/seed{seed}.log",
    conda:
        "../envs/pgolf.yaml"
    threads: 8
    resources:
        gpu=min(config["hardware"]["gpus"], 1),
    params:
        config=capfit_config,
    shell:
        "python -m pgolf.capfit --config {params.config:q} --model {input.model} --hessians {input.hessians} "
        "--out {output.preset} > {log} 2>&1"
