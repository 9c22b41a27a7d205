"""Quantize a trained model with one preset: GPTQ + SDClip, AWQ-lite, LQER (docs/record-stack.md §5.2, §6).

    python -m pgolf.quantize --config CFG --model results/<name>/seed<S>/train/model.pt \
        --hessians results/<name>/seed<S>/train/hessians.pt --preset record \
        --out results/<name>/seed<S>/quant/record/quantized.pt

CFG holds `{"preset": {...that preset...}, "hardware": {...}}` (the quantize rule puts only that preset in its
params, so editing one preset re-runs only that preset). Writes quantized.pt ({"tensors", "meta", "config"}, the
packer's input) and report.json beside it (per tensor: storage, bits, clip sigmas, ‖W−Ŵ‖_F and the H-weighted
error before and after LQER; the LQER and AWQ picks; seconds).
"""

import argparse
import dataclasses
from pathlib import Path

import torch

from .cli import doc_summary
from .dist import require_gpus
from .errors import PgolfError
from .io import atomic_path, load_torch, write_json
from .model import load_trained
from .quant import Preset, quantize_state
from .runlog import RunLog
from .stageconfig import load_stage_config


def load_hessians(path) -> dict:
    hessians = load_torch(path, "hessians.pt", "hessians")
    if not isinstance(hessians, dict) or "act_rms" not in hessians:
        raise PgolfError(f"{path}: not a hessians.pt (no act_rms); re-run the hessians stage")
    return hessians


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.quantize", description=doc_summary(__doc__))
    parser.add_argument("--config", required=True, help='JSON text or path: {"preset": {...}, "hardware": {...}}')
    parser.add_argument("--model", required=True, help="results/<name>/seed<S>/train/model.pt")
    parser.add_argument("--hessians", required=True, help="results/<name>/seed<S>/train/hessians.pt")
    parser.add_argument("--preset", required=True, help="the preset's name (recorded in the report)")
    parser.add_argument("--out", required=True, help="results/<name>/seed<S>/quant/<preset>/quantized.pt")
    args = parser.parse_args(argv)
    config = load_stage_config(args.config)
    if "preset" not in config:
        raise PgolfError('--config: needs {"preset": {...}}, the quant.presets entry to apply')
    run(config, args.model, args.hessians, args.preset, args.out)


def run(config: dict, model_path, hessians, preset_name: str, out):
    """Quantize the model at model_path with `config`'s preset; writes quantized.pt at `out`, report.json beside it.

    quantize.run({"preset": {...}, "hardware": {...}}, "results/<name>/seed1/train/model.pt",
                 "results/<name>/seed1/train/hessians.pt", "record",
                 "results/<name>/seed1/quant/record/quantized.pt")
    """
    preset = Preset.parse(config["preset"], f"config preset {preset_name}")
    gpus = config.get("hardware", {}).get("gpus", 0)
    require_gpus(gpus)
    device = torch.device("cuda" if gpus > 0 else "cpu")
    log = RunLog("quantize", config)
    model, model_config = load_trained(model_path, "cpu")
    quantized, report = quantize_state(
        model.unbanked_state_dict(), load_hessians(hessians), preset, model_config=model_config, device=device
    )
    with atomic_path(out) as tmp:
        torch.save(quantized, tmp)
    write_json(
        Path(out).with_name("report.json"),
        {"preset": preset_name, "settings": dataclasses.asdict(preset), "device": str(device), **report},
    )
    log.write({"event": "done", "seconds": report["seconds"], "lqer": report["lqer_picks"], "awq": report["awq_picks"]})


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
