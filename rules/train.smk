# Training (torchrun): one model per seed. model.pt is protected, so a later edit cannot silently throw away a
# 10-minute 8-GPU run; with train.checkpoint_minutes > 0 (the record's 0 saves none, as #1855) a checkpoint.pt beside
# the outputs (not an output itself) lets a crashed or requeued job resume where it stopped. Paths and the command
# come from pgolf/stages.py.


rule train:
    input:
        **stage_files("train", "inputs"),
        code=code_inputs("train"),
    output:
        **stage_files("train", "outputs", protect=["model"]),
    log:
        "logs/train/{name}/seed{seed}.log",
    conda:
        "../envs/pgolf.yaml"
    threads: 4 * RANKS
    resources:
        **gpu_request("train"),
    params:
        **stage_files("train", "params"),
        **config_params("train", train_config()),
        launch=torchrun(),
        ranks=RANKS,
    shell:
        stage_shell("train", prefix=OMP_LAUNCH)
