# Hessians (GPTQ calibration over the trained model) and quantization, one branch per preset: the preset is the
# {preset} wildcard and the quantize job's params hold that preset alone, so editing one preset re-runs only its
# quantize -> pack -> ... branch while training and the Hessians stay cached.
QUANT_MODULES = [
    f"quant.{m}"
    for m in ("__init__", "preset", "gptq", "awq", "lqer", "dequant", "state")
]


rule hessians:
    input:
        model="results/{name}/seed{seed}/train/model.pt",
        manifest=f"{DATA_DIR}/manifest.json",
        code=module_files(
            "hessians", "model", "attention", "shards", "dist", "launch", "runlog"
        ),
    output:
        hessians="results/{name}/seed{seed}/train/hessians.pt",
        summary="results/{name}/seed{seed}/train/hessians.json",
    log:
        "logs/hessians/{name}/seed{seed}.log",
    conda:
        "../envs/pgolf.yaml"
    threads: 4 * RANKS
    resources:
        gpu=config["hardware"]["gpus"],
    params:
        config=stage_config("hessians", "hardware"),
        launch=torchrun(),
        ranks=RANKS,
    shell:
        "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(( ({threads} + {params.ranks} - 1) / {params.ranks} )) "
        "{params.launch} -m pgolf.hessians --config {params.config:q} --model {input.model} "
        "--manifest {input.manifest} --seed {wildcards.seed} --out {output.hessians} > {log} 2>&1"


rule quantize:
    input:
        unpack(capfit_preset_file),
        model="results/{name}/seed{seed}/train/model.pt",
        hessians="results/{name}/seed{seed}/train/hessians.pt",
        code=module_files("quantize", "hessians", "model", "runlog", *QUANT_MODULES),
    output:
        quantized="results/{name}/seed{seed}/quant/{preset}/quantized.pt",
        report="results/{name}/seed{seed}/quant/{preset}/report.json",
    log:
        "logs/quantize/{name}/seed{seed}/{preset}.log",
    conda:
        "../envs/pgolf.yaml"
    resources:
        gpu=min(config["hardware"]["gpus"], 1),
    params:
        config=quant_config,
        preset_file=preset_file_option,
    shell:
        "python -m pgolf.quantize --config {params.config:q} --model {input.model} --hessians {input.hessians} "
        "--preset {wildcards.preset} {params.preset_file} --out {output.quantized} > {log} 2>&1"
