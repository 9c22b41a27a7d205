"""The submission: the records folder the DAG ends in.

    python -m pgolf.submission --config CFG --run-dir results/<name> --data-dir resources/data/<ds> \\
        --out-dir results/<name>/submission/<folder>

The folder follows the challenge's records/track_10min_16mb/ format: train_gpt.py, README.md, submission.json,
one log per seed, the tokenizer, requirements.txt and audit.json, every figure read from a measured output.
The in-process pipeline that train_gpt.py runs is pgolf.runall.
"""

import argparse
import ast
import json
import platform
import re
import shutil
import statistics
import sys
import tomllib
from pathlib import Path

from .cli import doc_summary
from .errors import PgolfError
from .io import read_json, write_bytes, write_json
from .stageconfig import load_stage_config
from .stats import acceptance

TIME_BUDGET_SECONDS = 600.0  # the challenge's training and evaluation limits, each


def requirements(script: Path) -> list[str]:
    """requirements.txt: the distribution of every outside module train_gpt.py imports, from its own lines and
    the sources of every module it carries (pgolf.codepack.submitted_files), each with the version that built it."""
    from importlib.metadata import packages_distributions, version

    from .codepack import submitted_files

    names = set()
    for source in [script.read_bytes(), *(p.read_bytes() for p in submitted_files())]:  # the script is latin-1
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add(node.module.split(".")[0])
    names -= {*sys.stdlib_module_names, "pgolf", "__future__"}
    known = packages_distributions()
    missing = sorted(n for n in names if n not in known)
    if missing:
        raise PgolfError(f"train_gpt.py imports {missing}, which no installed distribution provides; install them")
    dists = sorted({known[n][0] for n in names}, key=str.lower)
    minimum = minimum_versions()
    return [f"{d}{minimum.get(canonical(d), '')}  # built with {version(d)}" for d in dists] + [
        f"# built with Python {platform.python_version()}; lrzip (apt) decompresses the code and the model"
    ]


def canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def minimum_versions(pyproject=Path(__file__).resolve().parent.parent / "pyproject.toml") -> dict:
    """{distribution: ">=X"} as pgolf's pyproject.toml requires them (e.g. brotli>=1.2: pgolf.pack's bounded
    decoding), for requirements.txt; none where pgolf runs from an install without its source tree."""
    if not pyproject.is_file():
        return {}
    found = {}
    for spec in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        name, _, rest = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?(.*)", spec).groups()
        found[canonical(name)] = ",".join(part for part in rest.split(",") if part.startswith(">="))
    return found


def seed_outputs(config: dict, run_dir: Path, seed: int, preset: str) -> dict:
    """Every measured output of one seed the folder reports."""
    train, quant = run_dir / f"seed{seed}" / "train", run_dir / f"seed{seed}" / "quant" / preset
    return {
        "summary": read_json(train / "summary.json"),
        "hessians": read_json(train / "hessians.json"),
        "size": read_json(quant / "size.json"),
        "eval": read_json(quant / "eval.json"),
        "log_lines": (train / "log.jsonl").read_text().splitlines(),
        "header": json.loads((train / "log.jsonl").read_text().split("\n", 1)[0]),
        "script": quant / "train_gpt.py",
    }


def budget(value: float, limit: float, **details) -> dict:
    """One time or size check: its measured value against the limit."""
    ok = value <= limit
    return {"value": value, "limit": limit, **details, "passed": ok}


def scored_phase(eval_json: dict) -> tuple[dict, float]:
    """(loss and bpb, timed seconds) of the scored phase: TTT's, or the quantized eval's with TTT off (#1512)."""
    if eval_json["ttt"] is not None:
        return eval_json["ttt"], eval_json["seconds"]["eval_timer"]
    return eval_json["quantized"], eval_json["seconds"]["quantized_eval"]


def audit_checks(config: dict, data_audit: dict, seeds: dict) -> dict:
    """audit.json: each rule of the challenge checked against the output that measured it. Every check carries
    `passed` and `status` ("passed" / "failed"); `failed` lists the paths of the failed ones."""
    checks = {}
    for seed, out in seeds.items():
        summary, ev = out["summary"], out["eval"]
        train_s = summary["train_seconds"] + out["hessians"]["seconds"]
        score_first = ev["probes"]["score_first"]
        tilt_causal = ev["probes"]["tilt_causal"]
        checks[f"seed{seed}"] = {
            "train_seconds_incl_hessians": budget(
                train_s,
                TIME_BUDGET_SECONDS,
                train_loop_seconds=summary["train_seconds"],
                hessian_seconds=out["hessians"]["seconds"],
                resumes=summary.get("resumes", []),
                clock="wall clock from the first training step to the last (logging, syncs and checkpoint saves "
                "included; a resume adds its checkpoint's seconds), plus the Hessian collection",
                compile_warmup_seconds_outside=summary.get("compile_warmup_seconds"),
            ),
            "eval_seconds": budget(scored_phase(ev)[1], TIME_BUDGET_SECONDS, world=ev["world"], device=ev["device"]),
            "eval_seconds_projected_8gpu": budget(
                ev["projected_8gpu_seconds"],
                TIME_BUDGET_SECONDS,
                basis="the timed eval scaled linearly to the full val set on 8 GPUs of this kind",
            ),
            "total_bytes": budget(out["size"]["total_bytes"], out["size"]["cap_bytes"]),
            "targets_scored": {
                "value": ev["scored"],
                "expected": ev["targets"],
                "passed": ev["scored"] == ev["targets"],
            },
            "score_first_probe": score_first
            if isinstance(score_first, str)  # TTT off: nothing to probe
            else {**score_first, "passed": bool(score_first["passed"])},
            "tilt_causality_probe": tilt_causal
            if tilt_causal == "off"
            else {**tilt_causal, "passed": bool(tilt_causal["identical"])},
        }
    checks["train_val_overlap"] = {
        **data_audit["overlap"],
        "limit_fraction": data_audit["max_overlap_fraction"],
        "passed": bool(data_audit["passed"]),
    }
    failed = []

    def mark(node, path):
        for key, value in node.items():
            if isinstance(value, dict) and "passed" in value:
                value["status"] = "passed" if value["passed"] else "failed"
                if not value["passed"]:
                    failed.append(f"{path}{key}")
            elif isinstance(value, dict) and key.startswith("seed"):
                mark(value, f"{key}.")

    mark(checks, "")
    return {"all_passed": not failed, "failed": failed, "checks": checks}


def check_strict(audit: dict, strict: bool, out_dir: Path):
    """`audit.strict`: a failed check fails the submission rule."""
    if strict and audit["failed"]:
        raise PgolfError(
            f"{out_dir}/audit.json: check(s) failed: {', '.join(audit['failed'])}; fix the run, or set audit.strict "
            "to false to build the folder and say so in its README"
        )


def submission_json(config: dict, seeds: dict, stats: dict) -> dict:
    sub = config["submission"]
    results = {
        str(seed): {
            "val_loss": scored_phase(out["eval"])[0]["val_loss"],
            "val_bpb": out["eval"]["final_bpb"],
            "artifact_bytes": out["size"]["total_bytes"],
            "steps": out["summary"]["steps"],
            "step_avg_ms": round(1000 * out["summary"]["train_seconds"] / max(out["summary"]["steps"], 1), 1),
            "eval_time_s": round(scored_phase(out["eval"])[1], 1),
        }
        for seed, out in seeds.items()
    }
    losses = [r["val_loss"] for r in results.values()]
    bpbs = [r["val_bpb"] for r in results.values()]
    sizes = [r["artifact_bytes"] for r in results.values()]
    first = next(iter(seeds.values()))
    gpus = config["hardware"]["gpus"]
    return {
        "author": sub["author"],
        "github_id": sub["github_id"],
        "name": sub["name"],
        "blurb": sub["blurb"],
        "date": sub["date"],
        "track": sub["track"],
        "val_loss": statistics.fmean(losses),
        "val_bpb": statistics.fmean(bpbs),
        "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
        "val_bpb_std": statistics.stdev(bpbs) if len(bpbs) > 1 else 0.0,
        "seeds": [int(s) for s in seeds],
        "seed_results": results,
        "comparison_baseline_bpb": sub["comparison_bpb"],
        "delta_vs_leaderboard_bpb": stats["delta_bpb"],
        "delta_vs_leaderboard_nats": stats["delta_nats"],
        "artifact_bytes_mean": statistics.fmean(sizes),
        "artifact_bytes_max": max(sizes),
        "bytes_total": max(sizes),
        "train_steps_mean": statistics.fmean(r["steps"] for r in results.values()),
        "step_avg_ms_mean": statistics.fmean(r["step_avg_ms"] for r in results.values()),
        "hardware": f"{gpus}x {first['summary']['device']}" if gpus else f"CPU ({first['summary']['device']})",
        "pytorch_version": first["header"].get("torch"),
        "technique_summary": sub["name"],
    }


def verdict(stats: dict) -> str:
    """The acceptance line's conclusion: accepted yes/no, or why the t-test could not decide."""
    if stats["accepted"] is None:
        return f"accepted: undecided ({stats['seeds']} seed; the t-test needs at least 2)"
    return f"accepted: {'yes' if stats['accepted'] else 'no'}"


def readme(config: dict, seeds: dict, stats: dict, audit: dict, sub_json: dict) -> str:
    sub = config["submission"]
    rows = "\n".join(
        f"| {seed} | {out['eval']['prequant']['val_bpb']:.5f} | {out['eval']['quantized']['val_bpb']:.5f} | "
        f"{out['eval']['final_bpb']:.5f} | {out['summary']['steps']} | {out['summary']['train_seconds']:.1f} | "
        f"{out['hessians']['seconds']:.1f} | {scored_phase(out['eval'])[1]:.1f} | {out['size']['total_bytes']:,} |"
        for seed, out in seeds.items()
    )
    size = next(iter(seeds.values()))["size"]
    streams = "\n".join(f"| {name} | {n:,} |" for name, n in size["streams"].items())
    p = "n/a (one seed)" if stats["p_value"] is None else f"{stats['p_value']:.4g}"
    return f"""# {sub["name"]}

{sub["blurb"]}

Built by pgolf (a cached Snakemake DAG of the record stack); preset `{sub["preset"]}`, run `{config["run"]["name"]}`.
Reproduce one seed with `SEED=<seed> torchrun --standalone --nproc_per_node={max(config["hardware"]["gpus"], 1)} train_gpt.py`.

## Results

| seed | pre-quant bpb | quantized bpb | final bpb | steps | train s | Hessians s | eval s | total bytes |
|---|---|---|---|---|---|---|---|---|
{rows}

Mean val_bpb **{sub_json["val_bpb"]:.8f}** (std {sub_json["val_bpb_std"]:.5f}) over {len(seeds)} seed(s);
val_loss {sub_json["val_loss"]:.8f} nats.

## Acceptance (pgolf docs/record-stack.md §1.1)

Against {stats["comparison_bpb"]} bpb: delta {stats["delta_bpb"]:+.5f} bpb / {stats["delta_nats"]:+.5f} nats; required
improvement {stats["required_improvement_nats"]} nats, one-sided t-test p = {p}; {verdict(stats)}.

## Size (seed {next(iter(seeds))})

model {size["model_bytes"]:,} + code {size["code_bytes"]:,} = **{size["total_bytes"]:,}** of {size["cap_bytes"]:,}
bytes (headroom {size["headroom_bytes"]:,}); code minified by Python {size["code_python"]}.

| stream | bytes |
|---|---|
{streams}

## Hardware and timings

{sub_json["hardware"]}, PyTorch {sub_json["pytorch_version"]}. Training seconds are wall clock from the first step to
the last plus the Hessian collection; evaluation seconds are the timed phased TTT eval, projected to the full val set
on 8 GPUs of this kind.

## Compliance (audit.json)

{compliance_table(audit)}

{data_section(config)}"""


def data_section(config: dict) -> str:
    """How the tokenized data that train_gpt.py reads is made: the script carries no data preparation."""
    data = config["data"]
    folder = f"resources/data/{data['name']}"
    hf = data.get("hf") or {}
    made = {
        "hf_shards": f"`python -m pgolf.download` fetches the tokenizer and the shards of the Hugging Face data set "
        f"`{hf.get('repo')}` (revision `{hf.get('revision')}`, folder `{hf.get('shard_dir')}`, "
        f"{hf.get('train_shards')} train shards) and writes manifest.json",
        "hf_docs": f"`python -m pgolf.download` fetches `{hf.get('docs_file')}` of `{hf.get('docs_repo')}`, "
        "`python -m pgolf.tokenizer` trains the tokenizer on it and `python -m pgolf.tokenize` writes the "
        "shards and manifest.json",
        "local": f"`python -m pgolf.tokenizer` trains the tokenizer on `{(data.get('local') or {}).get('path')}` and "
        "`python -m pgolf.tokenize` writes the shards and manifest.json",
        "builtin": "`python -m pgolf.tokenizer` trains the tokenizer on Python's own documentation and "
        "`python -m pgolf.tokenize` writes the shards and manifest.json",
    }[data["source"]]
    return f"""## Data

train_gpt.py reads `{folder}/` (tokenizer.model, manifest.json, the shards and data_audit.json) from its working
directory and does not make it: {made}; then
`python -m pgolf.audit` checks the train/val overlap and writes data_audit.json. With pgolf, `snakemake --until
audit_data` runs these stages with this run's configuration.
"""


def compliance_table(audit: dict) -> str:
    """Every check of audit.json with its value, limit and status; a failed one is named "failed" and listed."""
    rows = []
    for name, node in audit["checks"].items():
        entries = node.items() if name.startswith("seed") else [(None, node)]
        for key, check in entries:
            if not isinstance(check, dict):
                rows.append(f"| {name}.{key} | {check} | | off |")
                continue
            value = check.get("value", check.get("fraction", check.get("max_abs_diff_before_update", "")))
            limit = check.get("limit", check.get("expected", check.get("limit_fraction", check.get("tolerance", ""))))
            value, limit = (f"{v:,.1f}" if isinstance(v, float) else v for v in (value, limit))
            rows.append(f"| {name + '.' + key if key else name} | {value} | {limit} | {check['status']} |")
    verdict = (
        "All checks passed."
        if audit["all_passed"]
        else "**Failed checks: " + ", ".join(audit["failed"]) + "** (this run cannot meet them)."
    )
    return "| check | value | limit | status |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + verdict


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.submission", description=doc_summary(__doc__))
    parser.add_argument("--config", required=True, help="resolved config: JSON text or path")
    parser.add_argument("--run-dir", required=True, type=Path, help="results/<name>")
    parser.add_argument("--data-dir", required=True, type=Path, help="resources/data/<ds>")
    parser.add_argument("--out-dir", required=True, type=Path, help="results/<name>/submission/<folder>")
    args = parser.parse_args(argv)
    config = load_stage_config(args.config)
    preset = config["submission"]["preset"]
    seeds = {seed: seed_outputs(config, args.run_dir, seed, preset) for seed in config["run"]["seeds"]}
    stats = acceptance(
        [scored_phase(o["eval"])[0]["val_loss"] for o in seeds.values()],
        [o["eval"]["final_bpb"] for o in seeds.values()],
        config["submission"]["comparison_bpb"],
    )
    audit = audit_checks(config, read_json(args.data_dir / "data_audit.json"), seeds)
    sub_json = submission_json(config, seeds, stats)
    sub_json["acceptance"] = stats
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    scripts = {o["script"].read_bytes() for o in seeds.values()}
    if len(scripts) != 1:
        raise PgolfError(f"{args.run_dir}: the seeds' train_gpt.py differ; re-run the code rule for every seed")
    write_bytes(out / "train_gpt.py", scripts.pop())
    shutil.copyfile(args.data_dir / "tokenizer.model", out / "tokenizer.model")
    for seed, o in seeds.items():
        extra = [
            json.dumps({"event": name, **o[key]}, sort_keys=True)
            for name, key in (("hessians", "hessians"), ("size", "size"), ("eval", "eval"))
        ]
        write_bytes(out / f"train_seed{seed}.log", ("\n".join(o["log_lines"] + extra) + "\n").encode())
    write_bytes(out / "requirements.txt", ("\n".join(requirements(out / "train_gpt.py")) + "\n").encode())
    write_json(out / "audit.json", audit)
    write_bytes(out / "README.md", readme(config, seeds, stats, audit, sub_json).encode())
    check_strict(audit, config.get("audit", {}).get("strict", False), out)
    write_json(out / "submission.json", sub_json)  # last: the rule's marker that the folder is complete


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
