"""One table from a side-by-side device call: pgolf's training throughput (bench/train_throughput.py JSON, one per
attention backend) and upstream #1855's script run in the same call on the same card and shards (its log from
bench/upstream/side_by_side.sh, each line prefixed with wall seconds).

    python bench/side_by_side.py --state before_looping OUT/throughput-auto.json ... OUT/upstream-preloop.log

Upstream's ms/step is the median over steady steps (5 on, past the compile of step 1) of the gap between the
training clocks of consecutive steps, each recovered from the step line's cumulative rate (step x batch tokens /
tok/s: five significant digits, where the 0.1 s wall prefix would quantize a step to 100 ms); its compile seconds
are the first step's clock less one steady step; its MFU uses pgolf's FLOPs-per-token definition with the mean attended keys pgolf measured on the same
batches (both pack a micro-batch as the record's DocumentPackingLoader) over the bf16 ceiling pgolf measured in
the same call. The ratio is pgolf's tokens/s over upstream's.
"""

import argparse
import json
import re
import statistics
from pathlib import Path

STEP = re.compile(r"^\[\s*[0-9.]+\] (\d+)/\d+ train_loss: ([0-9.]+) train_time: [0-9.]+m tok/s: (\d+)", re.M)
FIRST_LOSSES = 3  # the first steps' losses of both programs, side by side: same weights, same batches


def upstream_figures(log: str, batch_tokens: int) -> dict:
    steps = STEP.findall(log)
    clocks = [int(n) * batch_tokens / int(rate) for n, _, rate in steps]  # seconds at each step's end
    gaps = [b - a for a, b in zip(clocks, clocks[1:])][3:]
    if not gaps:
        return {"error": f"{len(clocks)} step lines in the log"}
    seconds = statistics.median(gaps)
    peak = re.search(r"peak memory allocated: (\d+) MiB", log)
    return {
        "ms_per_step": round(1000 * seconds, 1),
        "steps": len(clocks),
        "compile_s": round(clocks[0] - seconds, 1),
        "peak_gib": round(int(peak.group(1)) / 1024, 2) if peak else None,
        "first_losses": [float(loss) for _, loss, _ in steps[:FIRST_LOSSES]],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", choices=("before_looping", "looping"), required=True)
    parser.add_argument("pgolf", nargs="+", type=Path, help="throughput JSON files")
    parser.add_argument("upstream", type=Path, help="upstream's timestamped log")
    args = parser.parse_args(argv)
    runs = [json.loads(p.read_text()) for p in args.pgolf]
    first = runs[0]
    tokens = first["batch_tokens"]
    up = upstream_figures(args.upstream.read_text(), tokens)
    ceiling = first["ceiling_tflops"]
    phase = first["phases"][args.state]
    print(
        f"\n{first['device']}, torch {first['torch']}; {args.state}; batch {tokens:,} tokens; bf16 ceiling "
        f"{ceiling} TFLOP/s (this call)"
    )
    print("| program | attention | ms/step | tokens/s | vs upstream | MFU | compile s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    if "error" in up:
        print(f"| upstream #1855 | FA2 varlen (stand-in) | {up['error']} | | | | | |")
    else:
        up_tps = tokens / (up["ms_per_step"] / 1000)
        up_mfu = phase["model_tflops"] * phase["ms_per_step"] / up["ms_per_step"] / ceiling
        print(
            f"| upstream #1855 | FA2 varlen (stand-in) | {up['ms_per_step']:,} | {up_tps:,.0f} | 1.00x | "
            f"{up_mfu:.1%} | {up['compile_s']} | {up['peak_gib']} |"
        )
    for r in runs:
        p = r["phases"][args.state]
        ratio = f"{p['tokens_per_s'] / up_tps:.3f}x" if "error" not in up else ""
        program = " ".join(["pgolf", *(f"{k}={v}" for k, v in r.get("model_overrides", {}).items())])
        print(
            f"| {program} | {r['attention']} | {p['ms_per_step']:,} | {p['tokens_per_s']:,} | {ratio} | "
            f"{p['mfu']:.1%} | {p['compile_s']} | {r.get('peak_memory_gib')} |"
        )
    if "error" not in up:
        print(f"first losses: upstream {' / '.join(map(str, up['first_losses']))}")
    for r in runs:
        restart_s = r.get("restart_s", {})
        restart = restart_s.get(args.state, r.get("restart_error"))
        parts = ", ".join(f"{k} at {v} s" for k, v in restart_s.items() if k not in ("before_looping", "looping"))
        check = r.get("eager_check", {})
        print(
            f"pgolf {r['attention']}: restart on the cache, first step done at {restart} s"
            f"{f' ({parts})' if parts else ''}; eager check {'pass' if check.get('passed') else check or 'not run'}"
        )
        losses = [s["loss"] for s in r["losses"][:FIRST_LOSSES]]
        if "error" not in up and losses:
            worst = max(abs(a - b) for a, b in zip(losses, up["first_losses"]))
            print(
                f"pgolf {r['attention']}: first losses {' / '.join(map(str, losses))} (max |pgolf - upstream| "
                f"{worst:.4f})"
            )


if __name__ == "__main__":
    main()
