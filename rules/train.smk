# Training (torchrun): one model per seed. model.pt is protected, so a later edit cannot silently throw away a
# 10-minute 8-GPU run; a checkpoint.pt beside the outputs (not an output itself) lets a crashed or requeued job
# resume where it stopped.


rule train:
    input:
        manifest=f"{DATA_DIR}/manifest.json",
        audit=f"{DATA_DIR}/data_audit.json",
        code=module_files(
            "train",
            "optim",
            "loader",
            "checkpoint",
            "model",
            "attention",
            "shards",
            "dist",
            "launch",
            "runlog",
            "compile_cache",
        ),
    output:
        model=protected("results/{name}/seed{seed}/train/model.pt"),
        summary="results/{name}/seed{seed}/train/summary.json",
        log="results/{name}/seed{seed}/train/log.jsonl",
    log:
        "logs/train/{name}/seed{seed}.log",
    conda:
        "../envs/pgolf.yaml"
    threads: 4 * RANKS
    resources:
        gpu=config["hardware"]["gpus"],
    params:
        config=stage_config("model", "train", "hardware"),
        launch=torchrun(),
        ranks=RANKS,
        compile_cache=compile_cache_dir,
        out_dir=subpath(output.model, parent=True),
    shell:
        "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=$(( ({threads} + {params.ranks} - 1) / {params.ranks} )) "
        "{params.launch} -m pgolf.train --config {params.config:q} --manifest {input.manifest:q} "
        "--audit {input.audit:q} --seed {wildcards.seed:q} --out-dir {params.out_dir:q} "
        "--compile-cache {params.compile_cache:q} > {log:q} 2>&1"
