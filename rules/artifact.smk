# An artifact made elsewhere (eval.artifact): adopt the blob, size it with this recipe's train_gpt.py and score it,
# without training. `snakemake --until artifact_size` answers "does it fit?".
ARTIFACT_SCRIPT = f"results/{{name}}/seed{config['run']['seeds'][0]}/quant/{config['submission']['preset']}/train_gpt.py"


if config["eval"].get("artifact"):

    rule artifact_index:
        input:
            pgrp=config["eval"]["artifact"],
            code=module_files("pack"),
        output:
            pgrp="results/{name}/artifact/model.pgrp",
            info="results/{name}/artifact/pack.json",
        log:
            "logs/artifact_index/{name}.log",
        localrule: True
        conda:
            "../envs/pgolf.yaml"
        shell:
            "python -m pgolf.pack --index {input.pgrp:q} --out {output.pgrp:q} > {log:q} 2>&1"

    rule artifact_size:
        input:
            pgrp="results/{name}/artifact/model.pgrp",
            info="results/{name}/artifact/pack.json",
            script=ARTIFACT_SCRIPT,
            code=module_files("sizecheck", "pack", "codepack"),
        output:
            "results/{name}/artifact/size.json",
        log:
            "logs/artifact_size/{name}.log",
        localrule: True
        conda:
            "../envs/pgolf.yaml"
        shell:
            "python -m pgolf.sizecheck --pgrp {input.pgrp:q} --pack-json {input.info:q} --code {input.script:q} "
            "--out {output:q} > {log:q} 2>&1"

    rule artifact_evaluate:
        input:
            pgrp="results/{name}/artifact/model.pgrp",
            info="results/{name}/artifact/pack.json",
            size_json="results/{name}/artifact/size.json",
            manifest=f"{DATA_DIR}/manifest.json",
            code=module_files(*EVAL_MODULES),
        output:
            "results/{name}/artifact/eval.json",
        log:
            "logs/artifact_evaluate/{name}.log",
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
            "--pgrp {input.pgrp:q} --pack-json {input.info:q} --size {input.size_json:q} "
            "--manifest {input.manifest:q} --compile-cache {params.compile_cache:q} --out {output:q} > {log:q} 2>&1"
