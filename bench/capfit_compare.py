"""A baseline preset against the capfit preset at the same byte target, on one trained model: bytes, proxy,
quantized val_bpb, and the search's seconds.

    python bench/capfit_compare.py --config .device/configs/resolved.json --model results/<run>/seed<S>/train/model.pt \
        --hessians results/<run>/seed<S>/train/hessians.pt --manifest resources/data/<ds>/manifest.json \
        --out-dir OUT [--baseline record]

The config is a resolved config (bench/device_configs.py writes one) with quant.capfit set; its target is both
presets' target. Each preset is quantized, packed and its train_gpt.py built as the DAG's stages do, measured by
size_check's own report, then dequantized and scored by the evaluate stage's diagnostic eval (the `quantized`
number of eval.json, no TTT) on the val shards. Writes capfit_compare.json after every step (a deadline kill still
leaves what finished) and capfit.json (every candidate) into --out-dir, and prints a table. On the lent GPU this
runs inside bench/gpu_capfit.sh, after training and the Hessians.
"""

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgolf import capfit, codepack  # noqa: E402
from pgolf import dist as pgdist  # noqa: E402
from pgolf.bpb import load_val  # noqa: E402
from pgolf.evaluate import EvalConfig, prepare, score  # noqa: E402
from pgolf.io import write_json  # noqa: E402
from pgolf.model import GPT, ModelConfig, load_trained  # noqa: E402
from pgolf.pack import pack_as, sha256  # noqa: E402
from pgolf.quant import Preset, dequantize_state, quantize_state  # noqa: E402
from pgolf.quantize import load_hessians  # noqa: E402
from pgolf.sizecheck import size_report  # noqa: E402


def measure(state, hessians, values, config, name, model_config, device) -> dict:
    """Size (size_check's report) and proxy of a preset outside the search space, built under `name`."""
    quantized, report = quantize_state(state, hessians, values, model_config=model_config, device=device)
    blob = pack_as(quantized, config["pack"]["compressor"])
    script = codepack.build_script(config, name)  # `name` is a preset of the config
    with tempfile.TemporaryDirectory(prefix="pgolf-capfit-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "model.pgrp").write_bytes(blob)
        (tmp / "train_gpt.py").write_bytes(script)
        write_json(tmp / "pack.json", {"sha256": sha256(blob), "total_bytes": len(blob)})
        size = size_report(tmp / "model.pgrp", tmp / "pack.json", tmp / "train_gpt.py")
    return {
        "total_bytes": size["total_bytes"],
        "model_bytes": size["model_bytes"],
        "code_bytes": size["code_bytes"],
        "proxy": report["h_error"],
        "proxy_gptq": report["h_error_gptq"],
    }


def summary(candidate: dict) -> dict:
    keys = ("total_bytes", "model_bytes", "code_bytes", "proxy", "proxy_gptq")
    return {k: candidate[k] for k in keys}


def quantized_score(quantized, cfg: EvalConfig, val, dist) -> dict:
    """The evaluate stage's diagnostic eval of the dequantized model (eval.json's `quantized`)."""
    model_config = ModelConfig.from_dict(quantized["config"], "quantized state")
    model = prepare(GPT.from_unbanked(model_config, dequantize_state(quantized)), dist)
    t0 = time.perf_counter()
    result = score(model, val, cfg, dist)
    pgdist.sync(dist.device)
    return {"val_loss": result["val_loss"], "val_bpb": result["val_bpb"], "seconds": time.perf_counter() - t0}


def table(result: dict) -> str:
    rows = [
        "| preset | settings (attn, mlp, embed: bits, k; lqer top-k, rank; awq) | total bytes | proxy | quantized val_bpb |",
        "|---|---|---|---|---|",
    ]
    for key in ("baseline", "capfit"):
        r = result.get(key)
        if r:
            bpb = r.get("quantized", {}).get("val_bpb")
            rows.append(
                f"| {r['preset']} | {r['settings']} | {r['total_bytes']:,} | {r['proxy']:.6g} | "
                f"{'-' if bpb is None else f'{bpb:.5f}'} |"
            )
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a resolved config (bench/device_configs.py's resolved.json)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--hessians", required=True)
    parser.add_argument("--manifest", required=True, help="the val shards' manifest, for the quantized score")
    parser.add_argument("--baseline", default="record", help="the preset capfit is compared with (default record)")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    config = json.loads(Path(args.config).read_text())
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dist = pgdist.init(config["hardware"]["gpus"])
    model, model_config = load_trained(args.model, "cpu")
    state, hessians = model.unbanked_state_dict(), load_hessians(args.hessians)
    stage = capfit.stage_config(config)
    target = capfit.CapfitConfig.parse(stage["quant"]["capfit"]).target
    result = {"target_bytes": target, "device": str(dist.device)}

    def save():
        write_json(out / "capfit_compare.json", result)

    t0 = time.perf_counter()
    values, fit = capfit.run(stage, args.model, args.hessians, dist.device)
    stage_seconds = time.perf_counter() - t0
    write_json(out / "capfit.json", fit)
    winner = fit["candidates"][fit["winner"]]
    result["capfit"] = {
        "preset": capfit.PRESET,
        "settings": winner["settings"],
        **summary(winner),
        "checked_total_bytes": fit["checked"]["total_bytes"],
        "stage_seconds": stage_seconds,
        "search_seconds": fit["seconds"]["search"],
        "check_seconds": fit["seconds"]["check"],
        "candidates": len(fit["candidates"]),
        "fitting": sum(c["total_bytes"] <= target for c in fit["candidates"]),
        "cache": fit["cache"],
    }
    # the baseline's bytes and proxy: its row of the search when the space holds it (the same computation)
    baseline_values = config["quant"]["presets"][args.baseline]
    settings = capfit.describe(dataclasses.asdict(Preset.parse(baseline_values)))
    row = next((c for c in fit["candidates"] if c["settings"] == settings), None)
    if fit["base"] != args.baseline:
        row = None
    if row is None:
        measured = measure(state, hessians, baseline_values, config, args.baseline, model_config, dist.device)
    else:
        measured = summary(row)
    result["baseline"] = {
        "preset": args.baseline,
        "settings": settings,
        **measured,
        "fits_target": measured["total_bytes"] <= target,
        # a row of the search has its script built under the name capfit (a few bytes from the baseline's own)
        "bytes_built_as": capfit.PRESET if row is not None else args.baseline,
    }
    save()

    def quantized(preset_values):
        q, _ = quantize_state(state, hessians, preset_values, model_config=model_config, device=dist.device)
        return q

    eval_cfg = EvalConfig.parse(config.get("eval"))
    val = load_val(args.manifest, eval_cfg.val_docs_limit)
    result["baseline"]["quantized"] = quantized_score(quantized(baseline_values), eval_cfg, val, dist)
    save()
    result["capfit"]["quantized"] = quantized_score(quantized(values), eval_cfg, val, dist)
    base, fitted = result["baseline"], result["capfit"]
    result["proxy_ranks_like_bpb"] = (fitted["proxy"] < base["proxy"]) == (
        fitted["quantized"]["val_bpb"] < base["quantized"]["val_bpb"]
    )
    save()
    pgdist.shutdown()
    print(
        f"target {target:,} bytes on {dist.device}; capfit stage {stage_seconds:.1f} s "
        f"(search {fit['seconds']['search']:.1f} s over {len(fit['candidates'])} candidates, "
        f"check {fit['seconds']['check']:.1f} s)"
    )
    print(table(result))
    print(f"proxy ranks the two as quantized val_bpb does: {result['proxy_ranks_like_bpb']}")


if __name__ == "__main__":
    main()
