# An artifact made elsewhere (eval.artifact): adopt the blob, size it with this recipe's train_gpt.py and score it,
# without training. `snakemake --until artifact_size` answers "does it fit?". Paths and commands: pgolf/stages.py.


if config["eval"].get("artifact"):

    rule artifact_index:
        input:
            pgrp=config["eval"]["artifact"],
            code=code_inputs("artifact_index"),
        output:
            **stage_files("artifact_index", "outputs"),
        log:
            "logs/artifact_index/{name}.log",
        localrule: True
        conda:
            "../envs/pgolf.yaml"
        shell:
            stage_shell("artifact_index")

    rule artifact_size:
        input:
            **stage_files("artifact_size", "inputs"),
            script=stage_path(
                "script",
                seed=config["run"]["seeds"][0],
                preset=config["submission"]["preset"],
            ),
            code=code_inputs("artifact_size"),
        output:
            **stage_files("artifact_size", "outputs"),
        log:
            "logs/artifact_size/{name}.log",
        localrule: True
        conda:
            "../envs/pgolf.yaml"
        shell:
            stage_shell("artifact_size")

    rule artifact_evaluate:
        input:
            **stage_files("artifact_evaluate", "inputs"),
            code=code_inputs("artifact_evaluate"),
        output:
            **stage_files("artifact_evaluate", "outputs"),
        log:
            "logs/artifact_evaluate/{name}.log",
        conda:
            "../envs/pgolf.yaml"
        threads: RANKS
        resources:
            **gpu_request("artifact_evaluate"),
        params:
            **stage_files("artifact_evaluate", "params"),
            **config_params("eval", stage_config("eval", "hardware")),
            launch=torchrun(),
        shell:
            stage_shell("artifact_evaluate", prefix=LAUNCH)
