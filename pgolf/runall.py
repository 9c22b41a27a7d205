"""The in-process pipeline that the generated train_gpt.py runs: one seed, every GPU stage, in one torchrun job.

    torchrun --standalone --nproc_per_node=8 train_gpt.py    # calls run_all(CONFIG)

train -> hessians -> quantize -> pack -> size check -> evaluate, the rules' commands (pgolf.stages) run in-process,
writing the same files as the DAG. The data (resources/data/<ds>/: shards, manifest.json, data_audit.json) must be
there already: the DAG's data rules make it (`snakemake --until audit_data`), and the submission's README says so.
This module is the entry point of the import closure that pgolf.codepack ships, so it imports only what a judge's
run executes.
"""

import json
import os
import sys
from pathlib import Path

from . import stages
from .errors import PgolfError
from .io import read_json


def _run(module, stage: str, root: Path, values: dict, extra=()):
    """One stage in-process: its module's main() with the arguments pgolf.stages gives the rule."""
    module.main(stages.argv(stage, values, root=root) + list(extra))


def run_all(config: dict, seed: int | None = None, code_path=None, root="."):
    """One seed of the whole pipeline in this (torchrun) process group; returns eval.json's contents."""
    from . import dist as pgdist
    from . import evaluate, hessians, pack, quantize, sizecheck, train

    seed = int(os.environ.get("SEED", config["run"]["seeds"][0])) if seed is None else seed
    preset = config["quant"]["submission_preset"]  # pgolf.config.narrow_config sets it
    root = Path(root)
    wc = {"ds": config["data"]["name"], "name": config["run"]["name"], "seed": seed, "preset": preset}
    wildcards = {f"wildcards.{k}": v for k, v in wc.items()}
    for key in ("manifest", "data_audit"):
        if not (root / stages.path(key, **wc)).exists():
            raise PgolfError(
                f"{root / stages.path(key, **wc)}: not found; make the data first (`snakemake --until audit_data`)"
            )
    cfg = json.dumps(config, sort_keys=True)
    quant_cfg = json.dumps({"preset": config["quant"]["presets"][preset], "hardware": config["hardware"]})
    dist = pgdist.init(config["hardware"]["gpus"])
    try:
        _run(train, "train", root, {"params.config": cfg, **wildcards})
        _run(hessians, "hessians", root, {"params.config": cfg, **wildcards})
        if dist.is_main:
            _run(quantize, "quantize", root, {"params.config": quant_cfg, **wildcards})
            # no brotli-only comparison: minutes of one core that the judge's run does not need
            packing = config.get("pack", {})
            compressor = {
                "params.compressor": packing.get("compressor", "lrzip_groups"),
                "params.prune_target": packing.get("prune_target_bytes") or "none",
            }
            _run(pack, "pack", root, {**compressor, **wildcards}, ["--no-baseline"])
            _run(sizecheck, "size_check", root, {"input.script": str(code_path or sys.argv[0]), **wildcards})
        dist.barrier()
        _run(evaluate, "eval_prequant", root, {"params.config": cfg, **wildcards})
        _run(evaluate, "evaluate", root, {"params.config": cfg, **wildcards})
        return read_json(root / stages.path("eval", **wc))
    finally:
        pgdist.shutdown()
