"""Summarize a training log around #1512's late-QAT switch: ms/step before and after it, and peak memory.

    python bench/qat_probe.py results/<run>/seed<S>/train [--out probe.json]

Reads log.jsonl (its step records are means over the `log_every` steps before them) and summary.json from the
train stage's out dir; prints one table and writes the figures as JSON with --out.
"""

import argparse
import json
import statistics
from pathlib import Path


def summarize(train_dir: Path) -> dict:
    records = [json.loads(line) for line in (train_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((train_dir / "summary.json").read_text())
    qat = next((r["step"] for r in records if r.get("event") == "late_qat_enabled"), None)
    steps = [r for r in records if r.get("event") == "step"]

    def median_ms(rows):
        return round(statistics.median(r["ms_per_step"] for r in rows), 2) if rows else None

    # a step record's interval runs from the previous record's step count to its own; QAT is on from count qat
    starts = [0] + [r["step"] for r in steps[:-1]]
    before = [r for r in steps if qat is None or r["step"] <= qat]
    after = [r for r, start in zip(steps, starts) if qat is not None and start >= qat]
    return {
        "device": summary["device"],
        "steps": summary["steps"],
        "qat_from_step": qat,
        "seq_len": steps[-1]["seq_len"] if steps else None,
        "ms_per_step_before_qat": median_ms(before),
        "ms_per_step_with_qat": median_ms(after),
        "peak_memory_mib": summary["peak_memory_mib"],
        "final_loss": summary["final_loss"],
        "compile_warmup_seconds": summary["compile_warmup_seconds"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train_dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = summarize(args.train_dir)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
