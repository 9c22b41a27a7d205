# Evaluation: the diagnostic score of the trained model (once per seed) and, per preset, the quantized score plus
# the timed phased score-first TTT eval of the packed artifact (record-stack.md §8). The model config travels
# inside the artifact, so params hold only the eval and hardware sections.
EVAL_MODULES = [
    "evaluate",
    "bpb",
    "ttt",
    "lora",
    "ngram",
    "model",
    "attention",
    "pack",
    "shards",
    "dist",
    "launch",
    "compile_cache",
]
EVAL_MODULES += [
    f"quant.{m}"
    for m in ("__init__", "dequant", "lqer", "gptq", "awq", "preset", "state")
]


rule eval_prequant:
    input:
        model="results/{name}/seed{seed}/train/model.pt",
        manifest=f"{DATA_DIR}/manifest.json",
        code=module_files(*EVAL_MODULES),
    output:
        "results/{name}/seed{seed}/train/prequant.json",
    log:
        "logs/eval_prequant/{name}/seed{seed}.log",
    conda:
        "../envs/pgolf.yaml"
    threads: RANKS
    resources:
        gpu=config["hardware"]["gpus"],
    params:
        config=stage_config("eval", "hardware"),
        launch=torchrun(),
    shell:
        "HF_HUB_OFFLINE=1 {params.launch} -m pgolf.evaluate prequant --config {params.config:q} "
        "--model {input.model:q} --manifest {input.manifest:q} --out {output:q} > {log:q} 2>&1"


rule evaluate:
    input:
        pgrp="results/{name}/seed{seed}/quant/{preset}/model.pgrp",
        info="results/{name}/seed{seed}/quant/{preset}/pack.json",
        size_json="results/{name}/seed{seed}/quant/{preset}/size.json",
        prequant="results/{name}/seed{seed}/train/prequant.json",
        manifest=f"{DATA_DIR}/manifest.json",
        code=module_files(*EVAL_MODULES),
    output:
        "results/{name}/seed{seed}/quant/{preset}/eval.json",
    log:
        "logs/evaluate/{name}/seed{seed}/{preset}.log",
    conda:
        "../envs/pgolf.yaml"
    threads: RANKS
    resources:
        gpu=config["hardware"]["gpus"],
    params:
        config=stage_config("eval", "hardware"),
        launch=torchrun(),
        compile_cache=compile_cache_dir,
    shell:
        "HF_HUB_OFFLINE=1 {params.launch} -m pgolf.evaluate artifact --config {params.config:q} "
        "--pgrp {input.pgrp:q} --pack-json {input.info:q} --size {input.size_json:q} --prequant {input.prequant:q} "
        "--manifest {input.manifest:q} --compile-cache {params.compile_cache:q} --out {output:q} > {log:q} 2>&1"
