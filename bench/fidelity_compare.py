"""Side by side: pgolf's training log against upstream #1855's log of the same run (same shards, same steps).

    python bench/fidelity_compare.py --pgolf-log results/bench-fidelity/seed42/train/log.jsonl \\
        --prequant results/bench-fidelity/seed42/train/prequant.json [--upstream bench/upstream/h100-60steps.log]

Prints a markdown table: the training loss at every step both logged, the loop switch, the raw (pre-EMA) weights'
val_loss and val_bpb after the last step, the post-EMA pre-quantization val_bpb, and the verdict on the targets
(final training loss within 0.05, raw val_bpb within 0.01). Exit status 1 when a target is missed or a figure is
missing from either log.
"""

import argparse
import json
import re
import sys
from pathlib import Path

LOSS_TOLERANCE = 0.05  # final training loss
RAW_BPB_TOLERANCE = 0.01  # raw weights' val_bpb after the last step


def upstream_figures(path: Path) -> dict:
    """Training losses by step, the loop switch, the last-step raw val and the post-EMA pre-quant score."""
    text = path.read_text()
    losses = {int(m[1]): float(m[2]) for m in re.finditer(r"\b(\d+)/\d+ train_loss: ([0-9.]+)", text)}
    raw = re.findall(r"\b(\d+)/\d+ val_loss: ([0-9.]+) val_bpb: ([0-9.]+)", text)
    ema = re.search(r"diagnostic pre-quantization post-ema val_loss:([0-9.]+) val_bpb:([0-9.]+)", text)
    loop = re.search(r"layer_loop:enabled step:(\d+)", text)
    return {
        "losses": losses,
        "raw": {"step": int(raw[-1][0]), "val_loss": float(raw[-1][1]), "val_bpb": float(raw[-1][2])} if raw else None,
        "ema": {"val_loss": float(ema[1]), "val_bpb": float(ema[2])} if ema else None,
        "looping_from": int(loop[1]) if loop else None,
        "val_tokens": int(m[1]) if (m := re.search(r"val_tokens: (\d+)", text)) else None,
    }


def pgolf_figures(log: Path, prequant: Path | None) -> dict:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    raw = next((r for r in records if r.get("event") == "raw_val"), None)
    loop = next((r for r in records if r.get("event") == "looping_enabled"), None)
    done = next((r for r in records if r.get("event") == "done"), {})
    ema = json.loads(prequant.read_text()) if prequant and prequant.exists() else None
    return {
        "losses": {r["step"]: r["loss"] for r in records if r.get("event") == "step"},
        "raw": raw,
        "ema": ema,
        "looping_from": loop["step"] if loop else None,
        "val_tokens": raw["scored"] if raw else None,
        "device": done.get("device"),
    }


def fmt(x, digits=4):
    if x is None:
        return "-"
    return f"{x:,}" if isinstance(x, int) else f"{x:.{digits}f}"


def compare(up: dict, pg: dict) -> tuple[str, bool]:
    lines = ["| step | upstream train_loss | pgolf train_loss | pgolf - upstream |", "|---|---|---|---|"]
    for step in sorted(set(up["losses"]) | set(pg["losses"])):
        a, b = up["losses"].get(step), pg["losses"].get(step)
        lines.append(f"| {step} | {fmt(a)} | {fmt(b)} | {fmt(b - a if None not in (a, b) else None, 4)} |")
    last = max(up["losses"]) if up["losses"] else None
    final_up, final_pg = up["losses"].get(last), pg["losses"].get(last)
    rows = [
        ("loop switch (steps before looping)", up["looping_from"], pg["looping_from"], None),
        ("val targets (upstream val_tokens, pgolf scored)", up["val_tokens"], pg["val_tokens"], None),
        ("raw weights val_loss", *(f["raw"] and f["raw"]["val_loss"] for f in (up, pg)), None),
        ("raw weights val_bpb", *(f["raw"] and f["raw"]["val_bpb"] for f in (up, pg)), RAW_BPB_TOLERANCE),
        ("post-EMA pre-quant val_bpb", *(f["ema"] and f["ema"]["val_bpb"] for f in (up, pg)), None),
        (f"final train_loss (step {last})", final_up, final_pg, LOSS_TOLERANCE),
    ]
    lines += ["", "| figure | upstream | pgolf | difference | target |", "|---|---|---|---|---|"]
    ok = True
    for name, a, b, tolerance in rows:
        diff = b - a if None not in (a, b) else None
        verdict = ""
        if tolerance is not None:
            passed = diff is not None and abs(diff) <= tolerance
            ok &= passed
            verdict = f"within {tolerance}: {'PASS' if passed else 'FAIL'}"
        digits = 6 if "bpb" in name else 4
        lines.append(f"| {name} | {fmt(a, digits)} | {fmt(b, digits)} | {fmt(diff, digits)} | {verdict} |")
    lines += ["", f"pgolf device: {pg['device'] or 'unknown'}; verdict: {'PASS' if ok else 'FAIL'}"]
    return "\n".join(lines), ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pgolf-log", required=True, type=Path, help="the train stage's log.jsonl")
    parser.add_argument("--prequant", type=Path, help="eval_prequant's prequant.json (post-EMA pre-quant score)")
    parser.add_argument(
        "--upstream",
        type=Path,
        default=Path("bench/upstream/h100-60steps.log"),
        help="upstream's log (default bench/upstream/h100-60steps.log)",
    )
    args = parser.parse_args(argv)
    for path in (args.pgolf_log, args.upstream):
        if not path.exists():
            sys.exit(f"{path}: not found")
    table, ok = compare(upstream_figures(args.upstream), pgolf_figures(args.pgolf_log, args.prequant))
    print(f"# pgolf against upstream #1855 ({args.upstream})\n\n{table}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
