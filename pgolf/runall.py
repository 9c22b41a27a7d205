"""The in-process pipeline that the generated train_gpt.py runs: one seed, every GPU stage, in one torchrun job.

    torchrun --standalone --nproc_per_node=8 train_gpt.py    # calls run_all(CONFIG)

train -> hessians -> quantize -> pack -> size check -> evaluate: each stage module's `run` (evaluate's `prequant`
and `artifact`), which its command-line `main` calls too, on the files of pgolf.stages.path, so it writes what the
DAG writes. The data (resources/data/<ds>/: shards, manifest.json, data_audit.json) must be there already: the
DAG's data rules make it (`snakemake --until audit_data`), and the submission's README says so. This module is the
entry point of the import closure that pgolf.codepack ships, so it imports only what a judge's run executes.
"""

import os
import sys
from pathlib import Path

from . import stages
from .errors import PgolfError
from .io import read_json


def run_all(config: dict, seed: int | None = None, code_path=None, root="."):
    """One seed of the whole pipeline in this (torchrun) process group; returns eval.json's contents."""
    from . import dist as pgdist
    from . import evaluate, hessians, pack, quantize, sizecheck, train

    seed = int(os.environ.get("SEED", config["run"]["seeds"][0])) if seed is None else seed
    preset = config["quant"]["submission_preset"]  # pgolf.config.narrow_config sets it
    wildcards = {"ds": config["data"]["name"], "name": config["run"]["name"], "seed": seed, "preset": preset}

    def at(key):
        return Path(root, stages.path(key, **wildcards))

    for key in ("manifest", "data_audit"):
        if not at(key).exists():
            raise PgolfError(f"{at(key)}: not found; make the data first (`snakemake --until audit_data`)")
    dist = pgdist.init(config["hardware"]["gpus"])
    try:
        train.run(config, at("manifest"), at("data_audit"), seed, at("train_dir"), at("compile_cache"))
        hessians.run(config, at("model"), at("manifest"), seed, at("hessians"))
        if dist.is_main:
            quant_config = {"preset": config["quant"]["presets"][preset], "hardware": config["hardware"]}
            quantize.run(quant_config, at("model"), at("hessians"), preset, at("quantized"))
            packing = config.get("pack", {})
            compressor = packing.get("compressor", "lrzip_groups")
            # no brotli-only comparison: minutes of one core that the judge's run does not need
            pack.run(at("quantized"), at("pgrp"), compressor, packing.get("prune_target_bytes") or None, baseline=False)
            sizecheck.run(at("pgrp"), at("pack_info"), Path(code_path or sys.argv[0]), at("size"), preset)
        dist.barrier()
        evaluate.prequant(config, at("model"), at("manifest"), at("prequant"))
        evaluate.artifact(
            config, at("pgrp"), at("pack_info"), at("size"), at("manifest"), at("eval"), at("prequant"),
            at("compile_cache"),
        )  # fmt: skip
        return read_json(at("eval"))
    finally:
        pgdist.shutdown()
