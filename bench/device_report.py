"""Collect the device calls' outputs into $OUT and print their short table (used by bench/gpu_*.sh).

    python bench/device_report.py experiment --out $OUT --logs DIR --configs DIR --data DIR --train DIR --quant DIR --rc N
    python bench/device_report.py evaluate --out $OUT --logs DIR --configs DIR --data DIR --experiment DIR --eval FILE --rc N
    python bench/device_report.py stages --out $OUT --logs DIR --rc N      (stages.json and logs.txt alone)

Writes stages.json (wall seconds and exit status per stage), logs.txt (the tail of every stage's log, more of
a failing one) and experiment.json or evaluation.json (the small outputs of the stages in one file), then prints
a table. Reads only what exists, so it also reports a run that stopped early.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

from pgolf.io import write_json

TAIL_LINES, FAILED_TAIL_LINES, LINE_CHARS = 25, 150, 500


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_jsonl(path, limit=400):
    path = Path(path)
    if not path.exists():
        path = path.with_name(path.name + ".partial")
    if not path.exists():
        return None
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows[-limit:]


def read_stages(logs: Path, rc: int) -> dict:
    seconds, status = {}, {}
    tsv = logs / "stages.tsv"
    if tsv.exists():
        for line in tsv.read_text().splitlines():
            name, secs, code = line.split("\t")
            seconds[name], status[name] = float(secs), int(code)
    failed = next((name for name, code in status.items() if code != 0), None)
    machine = (logs / "machine.txt").read_text().splitlines() if (logs / "machine.txt").exists() else []
    return {
        "seconds": seconds,
        "status": status,
        "failed": failed,
        "exit_status": rc,
        "total_seconds": round(sum(seconds.values()), 2),
        "machine": machine,
    }


def configs_sha256(configs: Path) -> str:
    """One digest over the stage configs (so the second call can tell it ran with the first call's)."""
    digest = hashlib.sha256()
    for path in sorted(configs.glob("*.json")):
        if path.name != "resolved.json":
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def write_logs(out: Path, logs: Path, stages: dict):
    parts = []
    if stages["machine"]:
        parts.append("==== machine ====\n" + "\n".join(stages["machine"]))
    for name, secs in stages["seconds"].items():
        log = logs / f"{name}.log"
        if not log.exists():
            continue
        code = stages["status"][name]
        lines = log.read_text(errors="replace").splitlines()
        keep = FAILED_TAIL_LINES if code else TAIL_LINES
        shown = [line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + " [...]" for line in lines[-keep:]]
        head = f"==== {name}: exit {code}, {secs:.1f} s, {len(lines)} lines" + (
            f" (last {keep})" if len(lines) > keep else ""
        )
        parts.append(head + " ====\n" + "\n".join(shown))
    (out / "logs.txt").write_text("\n\n".join(parts) + "\n")


def number(value):
    return value if isinstance(value, (int, float)) else None


def code_version():
    """pgolf's sources digest (and git commit, where there is one), as every stage log records it."""
    try:
        from pgolf.runlog import code_version as version

        return version()
    except Exception as e:  # a summary never fails on this
        return {"error": repr(e)}


def fmt(value, spec=""):
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def table(rows):
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def stage_rows(stages):
    return [
        (f"  {name}", f"{secs:8.1f} s" + (f"  EXIT {stages['status'][name]}" if stages["status"][name] else ""))
        for name, secs in stages["seconds"].items()
    ]


def val_shards(manifest):
    if not manifest:
        return None
    return [entry.get("sha256") for split in ("val", "val_bytes") for entry in manifest["shards"].get(split, [])]


def experiment(args):
    out, logs = Path(args.out), Path(args.logs)
    stages = read_stages(logs, args.rc)
    write_json(out / "stages.json", stages)
    write_logs(out, logs, stages)
    train, quant, data = Path(args.train), Path(args.quant), Path(args.data)
    report = read_json(quant / "report.json")
    summary = {
        "recipes": None,
        "configs_sha256": configs_sha256(Path(args.configs)),
        "code_version": code_version(),
        "stages": stages,
        "train_summary": read_json(train / "summary.json"),
        "train_log": read_jsonl(train / "log.jsonl"),
        "hessians": read_json(train / "hessians.json"),
        "prequant": read_json(train / "prequant.json"),
        "quantize": {k: report[k] for k in ("preset", "device", "seconds") if k in report} if report else None,
        "pack": read_json(quant / "pack.json"),
        "size": read_json(quant / "size.json"),
        "audit": read_json(data / "data_audit.json"),
        "manifest": read_json(data / "manifest.json"),
    }
    vars_sh = Path(args.configs) / "vars.sh"
    for line in vars_sh.read_text().splitlines() if vars_sh.exists() else []:
        if line.startswith("PG_RECIPES="):
            summary["recipes"] = line.split("=", 1)[1].strip("'")
    write_json(out / "experiment.json", summary)

    t, pre, pack, size = (summary[k] or {} for k in ("train_summary", "prequant", "pack", "size"))
    hess = summary["hessians"] or {}
    rows = (
        [("stage", "wall")]
        + stage_rows(stages)
        + [
            ("  total", f"{stages['total_seconds']:8.1f} s"),
            ("train steps / final loss", f"{fmt(t.get('steps'))} / {fmt(t.get('final_loss'))}"),
            (
                "train loop s / compile warm-up s",
                f"{fmt(t.get('train_seconds'))} / {fmt(t.get('compile_warmup_seconds'))}",
            ),
            (
                "ms/step before / after looping",
                f"{fmt(t.get('ms_per_step_before_looping'))} / {fmt(t.get('ms_per_step_after_looping'))}",
            ),
            ("hessians loop s (batches)", f"{fmt(hess.get('seconds'), '.2f')} ({fmt(hess.get('batches'))})"),
            ("prequant val_loss / val_bpb", f"{fmt(pre.get('val_loss'), '.5f')} / {fmt(pre.get('val_bpb'), '.5f')}"),
            ("quantize s", fmt(number((summary["quantize"] or {}).get("seconds")), ".2f")),
            (
                "pack s (cores) / brotli-only saved B",
                f"{fmt(pack.get('seconds'))} ({fmt(pack.get('cores'))}) / {fmt(pack.get('saved_vs_baseline_bytes'), ',')}",
            ),
            (
                "model + code = total B",
                f"{fmt(size.get('model_bytes'), ',')} + {fmt(size.get('code_bytes'), ',')}"
                f" = {fmt(size.get('total_bytes'), ',')}",
            ),
            ("headroom B", fmt(size.get("headroom_bytes"), ",")),
            ("exit", f"{args.rc}" + (f" (failed: {stages['failed']})" if stages["failed"] else "")),
        ]
    )
    print(table(rows))


def evaluate(args):
    out, logs = Path(args.out), Path(args.logs)
    stages = read_stages(logs, args.rc)
    write_json(out / "stages.json", stages)
    write_logs(out, logs, stages)
    result = read_json(args.eval) or {}
    first = read_json(Path(args.experiment) / "experiment.json") or {}
    here = val_shards(read_json(Path(args.data) / "manifest.json"))
    there = val_shards(first.get("manifest"))
    pre, quant, ttt = (result.get(k) or {} for k in ("prequant", "quantized", "ttt"))
    delta = {
        k: quant[k] - pre[k] for k in ("val_loss", "val_bpb") if quant.get(k) is not None and pre.get(k) is not None
    }
    summary = {
        "stages": stages,
        "configs_sha256": configs_sha256(Path(args.configs)),
        "configs_match_experiment": first.get("configs_sha256") == configs_sha256(Path(args.configs))
        if first
        else None,
        "code_version": code_version(),
        "code_matches_experiment": (first.get("code_version") or {}).get("sources_sha256")
        == code_version().get("sources_sha256")
        if first
        else None,
        "val_shards_match_experiment": (here == there) if here is not None and there is not None else None,
        "quantized_minus_prequant": delta or None,
        "eval": {
            k: result.get(k)
            for k in (
                "prequant",
                "quantized",
                "ttt",
                "ttt_no_tilt",
                "final_bpb",
                "targets",
                "bytes",
                "val_docs",
                "seconds",
                "projected_8gpu_seconds",
                "artifact_bytes",
                "device",
                "tilt",
                "probes",
            )
        }
        if result
        else None,
    }
    write_json(out / "evaluation.json", summary)
    seconds = result.get("seconds") or {}
    rows = (
        [("stage", "wall")]
        + stage_rows(stages)
        + [
            ("  total", f"{stages['total_seconds']:8.1f} s"),
            ("prequant val_loss / val_bpb", f"{fmt(pre.get('val_loss'), '.5f')} / {fmt(pre.get('val_bpb'), '.5f')}"),
            (
                "quantized val_loss / val_bpb",
                f"{fmt(quant.get('val_loss'), '.5f')} / {fmt(quant.get('val_bpb'), '.5f')}",
            ),
            (
                "quantized - prequant loss / bpb",
                f"{fmt(delta.get('val_loss'), '+.5f')} / {fmt(delta.get('val_bpb'), '+.5f')}",
            ),
            ("ttt val_loss / val_bpb", f"{fmt(ttt.get('val_loss'), '.5f')} / {fmt(ttt.get('val_bpb'), '.5f')}"),
            ("final_bpb", fmt(result.get("final_bpb"), ".5f")),
        ]
        + [(f"  eval {k} s", f"{v:8.2f}") for k, v in seconds.items() if isinstance(v, (int, float))]
        + [
            ("projected 8-GPU eval s", fmt(result.get("projected_8gpu_seconds"), ".1f")),
            ("targets / val docs", f"{fmt(result.get('targets'), ',')} / {fmt(result.get('val_docs'))}"),
            (
                "same val shards / configs / code as call 1",
                f"{fmt(summary['val_shards_match_experiment'])} / "
                f"{fmt(summary['configs_match_experiment'])} / "
                f"{fmt(summary['code_matches_experiment'])}",
            ),
            ("exit", f"{args.rc}" + (f" (failed: {stages['failed']})" if stages["failed"] else "")),
        ]
    )
    print(table(rows))


def stages_only(args):
    out, logs = Path(args.out), Path(args.logs)
    stages = read_stages(logs, args.rc)
    write_json(out / "stages.json", stages)
    write_logs(out, logs, stages)
    rows = (
        [("stage", "wall")]
        + stage_rows(stages)
        + [
            ("  total", f"{stages['total_seconds']:8.1f} s"),
            ("exit", f"{args.rc}" + (f" (failed: {stages['failed']})" if stages["failed"] else "")),
        ]
    )
    print(table(rows))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("experiment")
    ev = sub.add_parser("evaluate")
    only = sub.add_parser("stages")
    only.add_argument("--out", required=True)
    only.add_argument("--logs", required=True)
    only.add_argument("--rc", type=int, required=True)
    for p in (exp, ev):
        p.add_argument("--out", required=True)
        p.add_argument("--logs", required=True)
        p.add_argument("--configs", required=True)
        p.add_argument("--data", required=True)
        p.add_argument("--rc", type=int, required=True)
    exp.add_argument("--train", required=True)
    exp.add_argument("--quant", required=True)
    ev.add_argument("--experiment", required=True, help="the first call's files (.device/from_experiment)")
    ev.add_argument("--eval", required=True, help="eval.json written by pgolf.evaluate artifact")
    args = parser.parse_args(argv)
    {"experiment": experiment, "evaluate": evaluate, "stages": stages_only}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
