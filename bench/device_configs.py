"""Write the resolved stage configs of the device experiment, here, where jsonschema is installed.

    python bench/device_configs.py                       # config.yaml + recipes/bench-1gpu.yaml -> .device/configs/
    python bench/device_configs.py --out DIR [--preset P] recipes/bench-1gpu.yaml extra-overlay.yaml ...

bench/gpu_experiment.sh and bench/gpu_evaluate.sh run the DAG's stages as `python -m pgolf.<stage>` on the lent
GPU machine, which lacks jsonschema and Snakemake. This script merges config.yaml and the overlays (validated, with
the schema defaults filled: `pgolf.config.resolve`, exactly as the Snakefile does) and writes into --out the JSON
each stage's `--config` takes, built as rules/common.smk builds the rules' params: stage_config(*sections) for the
data, hessians and eval stages, data_audit_config() for audit_data, train_config() for train, quant_config() for
quantize, code_config() (pgolf.codepack's narrowing) for code. vars.sh beside them holds the names and paths the scripts need (dataset, run, seed, preset,
GPUs, ranks).
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgolf.codepack import narrow_config  # noqa: E402
from pgolf.config import resolve  # noqa: E402


def stage_config(config: dict, *sections) -> str:
    """rules/common.smk stage_config(): the sections a stage reads, sorted."""
    return json.dumps({s: config[s] for s in sections}, sort_keys=True)


def data_audit_config(config: dict) -> str:
    """rules/common.smk data_audit_config(): data and audit less audit.strict."""
    audit = {k: v for k, v in config["audit"].items() if k != "strict"}
    return json.dumps({"data": config["data"], "audit": audit}, sort_keys=True)


def train_config(config: dict) -> str:
    """rules/common.smk train_config(): model, train, hardware and the eval keys of the last-step raw val."""
    from pgolf.train import RAW_VAL_KEYS

    sections = {s: config[s] for s in ("model", "train", "hardware")}
    sections["eval"] = {k: config["eval"][k] for k in RAW_VAL_KEYS}
    return json.dumps(sections, sort_keys=True)


def quant_config(config: dict, preset: str) -> str:
    """rules/common.smk quant_config(): this preset alone plus the GPU count."""
    return json.dumps(
        {"preset": config["quant"]["presets"][preset], "hardware": {"gpus": config["hardware"]["gpus"]}},
        sort_keys=True,
    )


def code_config(config: dict, preset: str) -> str:
    """rules/common.smk code_config(): the config without `quant`, plus this preset only."""
    return json.dumps(narrow_config(config, preset), sort_keys=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "overlays",
        nargs="*",
        default=["recipes/bench-1gpu.yaml"],
        help="recipes merged over config.yaml, left to right (default: recipes/bench-1gpu.yaml)",
    )
    parser.add_argument("--out", default=".device/configs", help="folder to write (default .device/configs)")
    parser.add_argument("--preset", help="quant preset (default: submission.preset)")
    args = parser.parse_args(argv)

    files = ["config.yaml", *args.overlays]
    config = resolve(files)
    preset = args.preset or config["submission"]["preset"]
    if preset not in config["quant"]["presets"]:
        parser.error(f"preset {preset!r} is not in quant.presets ({sorted(config['quant']['presets'])})")
    hardware = config["hardware"]
    ranks = hardware["gpus"] or hardware.get("cpu_procs", 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = {
        "data": stage_config(config, "data"),  # tokenizer, tokenize
        "audit": data_audit_config(config),  # audit_data
        "train": train_config(config),
        "hessians": stage_config(config, "hessians", "hardware"),
        "quantize": quant_config(config, preset),
        "code": code_config(config, preset),
        "eval": stage_config(config, "eval", "hardware"),  # eval_prequant, evaluate
    }
    for name, text in configs.items():
        (out / f"{name}.json").write_text(text + "\n")
    (out / "resolved.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    data = config["data"]
    variables = {
        "PG_RECIPES": " ".join(files),
        "PG_DS": data["name"],
        "PG_RUN": config["run"]["name"],
        "PG_SEED": str(config["run"]["seeds"][0]),
        "PG_PRESET": preset,
        "PG_GPUS": str(hardware["gpus"]),
        "PG_CPU_PROCS": str(hardware.get("cpu_procs", 1)),
        "PG_RANKS": str(ranks),
        "PG_DATA_SOURCE": data["source"],
        "PG_LOCAL_PATH": str((data.get("local") or {}).get("path") or ""),
        "PG_TOKENIZER": str(data.get("tokenizer") or ""),
        "PG_COMPRESSOR": config["pack"]["compressor"],  # the pack rule's --compressor
        "PG_PRUNE_TARGET": str(config["pack"].get("prune_target_bytes") or "none"),  # and its --prune-target
    }
    (out / "vars.sh").write_text(
        "# written by bench/device_configs.py; sourced by bench/gpu_experiment.sh and bench/gpu_evaluate.sh\n"
        + "".join(f"{k}={shlex.quote(v)}\n" for k, v in variables.items())
    )
    print(f"{out}: {', '.join(sorted(configs))} (+ resolved.json, vars.sh) from {' + '.join(files)}; preset {preset}")


if __name__ == "__main__":
    main()
