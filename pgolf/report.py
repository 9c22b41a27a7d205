"""The report's figures, drawn with matplotlib from the stage JSON outputs.

    python -m pgolf.report --run-dir results/<name> --seeds 42 0 1234 --presets record awq \
        --out-dir results/<name>/report

Writes loss.svg (training loss of every seed, from train/log.jsonl step records), size.svg (bytes per stream of
model.pgrp plus code bytes, per preset and seed, from size.json), bpb.svg (bpb by stage: prequant, quantized,
TTT, final, from eval.json) and presets.svg (total bytes against final bpb, one point per preset and seed).
With --capfit instead of --presets it writes capfit.svg alone: every cap-fit candidate's exact bytes against its
proxy, with the target, the cap and the winner (from quant/capfit/capfit.json).
`snakemake --report report.html` shows them with the captions in workflow/report/. Every mark carries a gid
(an id in the SVG) naming what it shows, such as `size/record/seed1/mlp`.
"""

import argparse
import io
import json
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure  # a Figure of its own, not pyplot's global state or a display backend
from matplotlib.patches import Patch

from .cli import doc_summary
from .errors import PgolfError
from .io import read_json, write_bytes

SIZE = (7.2, 4.0)  # inches
STAGES = [("prequant", "prequant"), ("quantized", "quantized"), ("ttt", "TTT"), ("final", "final")]
# Fixed SVG ids and no date, so the same outputs draw byte-identical files
SVG_PARAMS = {"svg.hashsalt": "pgolf", "svg.fonttype": "path"}


def color(i: int) -> str:
    return f"C{i % 10}"


def fmt_bytes(v: float, _pos=None) -> str:
    return f"{v / 1e6:g} MB" if v >= 1e6 else f"{v / 1e3:g} kB" if v >= 1e3 else f"{v:g} B"


def new_figure(title: str):
    fig = Figure(figsize=SIZE, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    return fig, ax


def loss_figure(curves: dict) -> Figure:
    """curves: {seed: [(step, loss), ...]}: one line per seed with one point per step record."""
    fig, ax = new_figure("Training loss")
    for i, (seed, points) in enumerate(curves.items()):
        steps, losses = zip(*points)
        ax.plot(steps, losses, color=color(i), linewidth=1.5, label=f"seed {seed}", gid=f"loss/seed{seed}")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return fig


def size_figure(sizes: dict) -> Figure:
    """sizes: {(preset, seed): size.json}: one stacked bar per row, a segment per stream, then the code."""
    parts = list(dict.fromkeys(name for s in sizes.values() for name in s["streams"])) + ["code"]
    colors = {name: color(i) for i, name in enumerate(parts)}
    cap = next(iter(sizes.values()))["cap_bytes"]
    fig, ax = new_figure("Artifact size by stream")
    rows = list(sizes)
    for r, ((preset, seed), s) in enumerate(sizes.items()):
        start = 0
        for name, size in [*s["streams"].items(), ("code", s["code_bytes"])]:
            ax.barh(r, size, left=start, height=0.7, color=colors[name], gid=f"size/{preset}/seed{seed}/{name}")
            start += size
        ax.annotate(f" headroom {s['headroom_bytes']:,}", (start, r), va="center", fontsize=8)
    if max(s["total_bytes"] for s in sizes.values()) > cap / 2:
        ax.axvline(cap, color="red", linestyle="--", gid="size/cap", label="16 MB cap")
    ax.set_xlim(0, 1.35 * max(ax.get_xlim()[1], 1))  # room for the headroom labels inside the axes
    ax.set_yticks(range(len(rows)), [f"{preset} s{seed}" for preset, seed in rows])
    ax.invert_yaxis()  # first row on top
    ax.xaxis.set_major_formatter(fmt_bytes)
    ax.set_xlabel("bytes")
    handles = [Patch(color=colors[name], label=name) for name in parts]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return fig


def stage_values(ev: dict) -> dict:
    """bpb by stage of one eval.json (TTT absent when it was off)."""
    values = {stage: ev[stage]["val_bpb"] for stage in ("prequant", "quantized", "ttt") if ev.get(stage)}
    values["final"] = ev["final_bpb"]
    return values


def bpb_figure(evals: dict) -> Figure:
    """evals: {(preset, seed): eval.json}: per stage a bar per preset (mean over seeds) with a dot per seed."""
    presets = list(dict.fromkeys(p for p, _ in evals))
    values = {key: stage_values(ev) for key, ev in evals.items()}
    fig, ax = new_figure("Bits per byte by stage")
    width = 0.8 / len(presets)
    every = []
    for g, (stage, _label) in enumerate(STAGES):
        for i, preset in enumerate(presets):
            seeds = [vals[stage] for (p, _), vals in values.items() if p == preset and stage in vals]
            if not seeds:
                continue
            mean, x = sum(seeds) / len(seeds), g - 0.4 + (i + 0.5) * width
            ax.bar(
                x,
                mean,
                width=0.9 * width,
                color=color(i),
                gid=f"bpb/{preset}/{stage}",
                label=preset if g == 0 else None,
            )
            ax.annotate(f"{mean:.4f}", (x, mean), ha="center", va="bottom", fontsize=7)
            ax.scatter([x] * len(seeds), seeds, s=8, color="black", zorder=3, gid=f"bpb/{preset}/{stage}/seeds")
            every += seeds
    lo, hi = min(every), max(every)
    pad = 0.15 * (hi - lo or abs(hi) or 1.0)
    ax.set_ylim(lo - pad, hi + pad)  # the differences between stages, not the distance from zero
    ax.set_xticks(range(len(STAGES)), [label for _, label in STAGES])
    ax.set_ylabel("bits per byte")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return fig


def presets_figure(sizes: dict, evals: dict) -> Figure:
    """One point per preset and seed: total bytes (size.json) against final bpb (eval.json)."""
    presets = list(dict.fromkeys(p for p, _ in sizes))
    cap = next(iter(sizes.values()))["cap_bytes"]
    fig, ax = new_figure("Presets: size against final bpb")
    for i, preset in enumerate(presets):
        keys = [key for key in sizes if key[0] == preset]
        xs = [sizes[key]["total_bytes"] for key in keys]
        ys = [evals[key]["final_bpb"] for key in keys]
        ax.scatter(xs, ys, s=30, color=color(i), label=preset, gid=f"presets/{preset}")
        ax.annotate(f" {preset}", (xs[0], ys[0]), fontsize=8)
    totals = [s["total_bytes"] for s in sizes.values()]
    if max(totals) > 0.98 * cap:
        ax.axvline(cap, color="red", linestyle="--", gid="presets/cap")
    ax.xaxis.set_major_formatter(fmt_bytes)
    ax.set_xlabel("total bytes (model.pgrp + code)")
    ax.set_ylabel("final bits per byte")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return fig


def svg_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with matplotlib.rc_context(SVG_PARAMS):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def step_records(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        raise PgolfError(f"{path}: file not found; run the train stage first")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    points = [(r["step"], r["loss"]) for r in records if r.get("event") == "step"]
    if not points:
        raise PgolfError(f"{path}: no step records; lower train.log_every or re-run the train stage")
    return points


CAPFIT_COLORS = {"winner": "C3", "fits": "C0", "over_target": "C7", "check_failed": "C1"}


def capfit_figure(fits: dict) -> Figure:
    """fits: {seed: capfit.json}: every candidate's exact total bytes against its proxy (log scale), coloured by
    status, the target and the cap as vertical lines; each seed its own marker, the winners large."""
    fig, ax = new_figure("Cap-fit: size against predicted loss increase")
    first = next(iter(fits.values()))
    for s, (seed, fit) in enumerate(fits.items()):
        marker = "os^vD"[s % 5]
        for status, status_color in CAPFIT_COLORS.items():
            rows = [c for c in fit["candidates"] if c["status"] == status]
            if rows:
                ax.scatter(
                    [c["total_bytes"] for c in rows],
                    [max(c["proxy"], 1e-30) for c in rows],
                    s=60 if status == "winner" else 14,
                    marker=marker,
                    color=status_color,
                    label=status.replace("_", " ") if s == 0 else None,
                    gid=f"capfit/seed{seed}/{status}",
                )
        winner = next(c for c in fit["candidates"] if c["id"] == fit["winner"])
        ax.annotate(f" winner s{seed}", (winner["total_bytes"], max(winner["proxy"], 1e-30)), fontsize=8)
    totals = [c["total_bytes"] for fit in fits.values() for c in fit["candidates"]]
    for label, value, line_color in (
        ("target", first["target_bytes"], "black"),
        ("16 MB cap", first["cap_bytes"], "red"),
    ):
        if value <= 1.5 * max(totals):  # a far-away cap would squash the points
            ax.axvline(value, color=line_color, linestyle="--", gid=f"capfit/{label.split()[-1]}", label=label)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(fmt_bytes)
    ax.set_xlabel("total bytes (model.pgrp + train_gpt.py)")
    ax.set_ylabel("proxy: summed tr(E·H·Eᵀ)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return fig


def figures(run_dir, seeds, presets) -> dict:
    """Every figure (a matplotlib Figure), keyed by file stem."""
    run_dir = Path(run_dir)
    curves = {seed: step_records(run_dir / f"seed{seed}" / "train" / "log.jsonl") for seed in seeds}
    keys = [(preset, seed) for preset in presets for seed in seeds]
    quant = {key: run_dir / f"seed{key[1]}" / "quant" / key[0] for key in keys}
    sizes = {key: read_json(quant[key] / "size.json") for key in keys}
    evals = {key: read_json(quant[key] / "eval.json") for key in keys}
    return {
        "loss": loss_figure(curves),
        "size": size_figure(sizes),
        "bpb": bpb_figure(evals),
        "presets": presets_figure(sizes, evals),
    }


def capfit_figures(run_dir, seeds) -> dict:
    """{"capfit": Figure} from every seed's quant/capfit/capfit.json."""
    fits = {seed: read_json(Path(run_dir) / f"seed{seed}" / "quant" / "capfit" / "capfit.json") for seed in seeds}
    return {"capfit": capfit_figure(fits)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.report", description=doc_summary(__doc__))
    parser.add_argument("--run-dir", required=True, help="results/<name> (holds seed<S>/train and seed<S>/quant)")
    parser.add_argument("--seeds", required=True, nargs="+", help="the run's seeds (config run.seeds)")
    figure = parser.add_mutually_exclusive_group(required=True)
    figure.add_argument("--presets", nargs="+", help="built presets, the submission's first")
    figure.add_argument("--capfit", action="store_true", help="write capfit.svg alone, from quant/capfit/capfit.json")
    parser.add_argument("--out-dir", required=True, help="folder for loss.svg, size.svg, bpb.svg, presets.svg")
    args = parser.parse_args(argv)
    made = capfit_figures(args.run_dir, args.seeds) if args.capfit else figures(args.run_dir, args.seeds, args.presets)
    drawn = {name: svg_bytes(fig) for name, fig in made.items()}
    for name, svg in drawn.items():
        write_bytes(Path(args.out_dir) / f"{name}.svg", svg)


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
