# Packaging, per preset: the quantized state -> model.pgrp (per-group lrzip), the pgolf sources -> the single-file
# train_gpt.py, and the 16 MB check over both. The code rule's params hold the config without `quant` plus this
# preset only, so editing another preset leaves this preset's script (and everything after it) cached.


rule pack:
    input:
        quantized="results/{name}/seed{seed}/quant/{preset}/quantized.pt",
        code=module_files("pack", "prune", "quant.preset"),
    output:
        pgrp="results/{name}/seed{seed}/quant/{preset}/model.pgrp",
        info="results/{name}/seed{seed}/quant/{preset}/pack.json",
    log:
        "logs/pack/{name}/seed{seed}/{preset}.log",
    conda:
        "../envs/pgolf.yaml"
    threads: 8
    resources:
        gpu=min(config["hardware"]["gpus"], 1),
    params:
        config=quant_config,
    shell:
        "python -m pgolf.pack --config {params.config:q} --quantized {input.quantized} --out {output.pgrp} "
        "> {log} 2>&1"


rule code:
    input:
        code=package_sources(),
    output:
        "results/{name}/seed{seed}/quant/{preset}/train_gpt.py",
    log:
        "logs/code/{name}/seed{seed}/{preset}.log",
    localrule: True
    conda:
        "../envs/pgolf.yaml"
    params:
        config=code_config,
    shell:
        "python -m pgolf.codepack --config {params.config:q} --preset {wildcards.preset} --out {output} > {log} 2>&1"


rule size_check:
    input:
        pgrp="results/{name}/seed{seed}/quant/{preset}/model.pgrp",
        info="results/{name}/seed{seed}/quant/{preset}/pack.json",
        script="results/{name}/seed{seed}/quant/{preset}/train_gpt.py",
        code=module_files("sizecheck", "pack", "codepack"),
    output:
        "results/{name}/seed{seed}/quant/{preset}/size.json",
    log:
        "logs/size_check/{name}/seed{seed}/{preset}.log",
    localrule: True
    conda:
        "../envs/pgolf.yaml"
    shell:
        "python -m pgolf.sizecheck --pgrp {input.pgrp} --pack-json {input.info} --code {input.script} "
        "--preset {wildcards.preset} --out {output} > {log} 2>&1"
