"""The 16 MB check: packed model bytes plus counted code bytes must fit the challenge's decimal cap.

    python -m pgolf.sizecheck --pgrp results/<name>/seed<seed>/quant/<preset>/model.pgrp \
        --pack-json .../pack.json --code .../train_gpt.py --preset <preset> --out .../size.json

Over the cap it stops with the breakdown and the preset knobs that shrink the artifact (train_gpt.py's run: the
breakdown alone, the knobs being the DAG's advice), and writes nothing, so evaluation never starts
(docs/record-stack.md §1.1: code bytes + compressed model bytes <= 16,000,000).
"""

import argparse
from pathlib import Path

from .codeheader import read_header
from .errors import PgolfError
from .io import write_json
from .pack import artifact_streams, verify

CAP_BYTES = 16_000_000


def size_report(pgrp, pack_json, code) -> dict:
    data = verify(pgrp, pack_json)
    versions = read_header(code)
    code_bytes = Path(code).stat().st_size
    total = len(data) + code_bytes
    return {
        "model_bytes": len(data),  # model.pgrp alone; artifact (model + code) = total_bytes
        "code_bytes": code_bytes,
        "total_bytes": total,
        "cap_bytes": CAP_BYTES,
        "headroom_bytes": CAP_BYTES - total,
        "streams": artifact_streams(data, str(pgrp)),
        "code_python": versions["python"],
        "code_python_minifier": versions["python_minifier"],
    }


def over_cap_advice(report: dict, preset: str) -> str:
    """What shrinks an artifact over the cap: the preset's knobs, or the pruning target of #1512's lzma blob."""
    if "lzma_pruned" in report["streams"]:  # #1512's artifact: pruning sets its size
        return (
            f"set pack.prune_target_bytes to at most {report['cap_bytes'] - report['code_bytes']:,} (the cap less the "
            "code), then re-run"
        )
    return (
        f"shrink it in quant.presets.{preset}: raise the clip sigmas ({{attn,mlp,embed}}.clip_sigmas; a larger k "
        "gives smaller streams), lower embed.bits, or lower lqer.top_k; then re-run"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.sizecheck", description="Check the 16 MB cap.")
    parser.add_argument("--pgrp", required=True, help="model.pgrp from the pack stage")
    parser.add_argument("--pack-json", required=True, help="pack.json beside it (its sha256 is checked)")
    parser.add_argument("--code", required=True, help="train_gpt.py from the code stage")
    parser.add_argument("--preset", default="<preset>", help="preset name, for the message over the cap")
    parser.add_argument("--out", required=True, help="size.json to write")
    args = parser.parse_args(argv)
    run(args.pgrp, args.pack_json, args.code, args.out, args.preset)


def run(pgrp, pack_json, code, out, preset: str):
    """Write size.json at `out`, or stop with the breakdown when model.pgrp and train_gpt.py are over the cap.

    sizecheck.run(".../quant/record/model.pgrp", ".../quant/record/pack.json", "train_gpt.py",
                  ".../quant/record/size.json", "record")
    """
    report = size_report(pgrp, pack_json, code)
    if report["headroom_bytes"] < 0:
        streams = ", ".join(f"{name} {size:,}" for name, size in report["streams"].items())
        raise PgolfError(
            f"{pgrp} + {code}: total {report['total_bytes']:,} bytes is over the cap of {CAP_BYTES:,} by "
            f"{-report['headroom_bytes']:,} (model.pgrp {report['model_bytes']:,} = {streams}, plus train_gpt.py "
            f"{report['code_bytes']:,}); {over_cap_advice(report, preset)}"
        )
    write_json(out, report)


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
