"""The report's figures: SVG written by hand from the stage JSON outputs (no plotting library).

    python -m pgolf.report --run-dir results/<name> --seeds 42 0 1234 --presets record awq \
        --out-dir results/<name>/report
    python -m pgolf.report --run-dir results/<name> --seeds 42 --capfit --out-dir results/<name>/report

Writes loss.svg (training loss of every seed, from train/log.jsonl step records), size.svg (bytes per stream of
model.pgrp plus code bytes, per preset and seed, from size.json), bpb.svg (bpb by stage: prequant, quantized,
TTT, final, from eval.json) and presets.svg (total bytes against final bpb, one point per preset and seed).
With --capfit instead of --presets it writes capfit.svg alone: every cap-fit candidate's exact bytes against its
proxy, with the target, the cap and the winner (from quant/capfit/capfit.json).
`snakemake --report report.html` shows them with the captions in workflow/report/.
"""

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from .errors import PgolfError
from .io import read_json, write_bytes
from .cli import doc_summary

WIDTH, HEIGHT = 720, 400
LEFT, RIGHT, TOP, BOTTOM = 80, 170, 40, 50  # plot margins; the legend sits in the right one
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
STAGES = [("prequant", "prequant"), ("quantized", "quantized"), ("ttt", "TTT"), ("final", "final")]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi], about `count` of them (steps of 1, 2 or 5 times a power of ten)."""
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= m * step)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


@dataclass
class Scale:
    """Linear map of data [lo, hi] onto pixels [start, end] (end < start for a y axis)."""

    lo: float
    hi: float
    start: float
    end: float

    @classmethod
    def fit(cls, values, start, end, pad=0.05, zero=False):
        lo, hi = (0.0 if zero else min(values)), max(values)
        span = hi - lo or abs(hi) or 1.0
        return cls(lo if zero else lo - pad * span, hi + pad * span, start, end)

    def __call__(self, v: float) -> float:
        return round(self.start + (v - self.lo) / (self.hi - self.lo) * (self.end - self.start), 2)


def el(tag: str, text: str = "", **attrs) -> str:
    """One SVG element; attribute names use _ for - (stroke_width -> stroke-width) and data_x for data-x."""
    attr = "".join(f" {k.replace('_', '-')}={quoteattr(str(v))}" for k, v in attrs.items())
    return f"<{tag}{attr}>{escape(text)}</{tag}>" if text else f"<{tag}{attr}/>"


def tooltip(tag: str, tip: str, **attrs) -> str:
    """An element with a <title> child, which browsers show on hover."""
    attr = "".join(f" {k.replace('_', '-')}={quoteattr(str(v))}" for k, v in attrs.items())
    return f"<{tag}{attr}><title>{escape(tip)}</title></{tag}>"


def document(title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'font-family="sans-serif" font-size="11">'
        + el("title", title)
        + el("rect", width=WIDTH, height=HEIGHT, fill="white")
        + el("text", title, x=WIDTH / 2, y=22, text_anchor="middle", font_size=14)
        + "".join(body)
        + "</svg>\n"
    )


def y_axis(y: Scale, label: str, fmt) -> list[str]:
    out = [el("line", x1=LEFT, x2=LEFT, y1=TOP, y2=HEIGHT - BOTTOM, stroke="black")]
    for t in nice_ticks(y.lo, y.hi):
        out.append(el("line", x1=LEFT, x2=WIDTH - RIGHT, y1=y(t), y2=y(t), stroke="#ddd"))
        out.append(el("text", fmt(t), x=LEFT - 6, y=y(t) + 4, text_anchor="end"))
    mid = (TOP + HEIGHT - BOTTOM) / 2
    out.append(el("text", label, x=16, y=mid, text_anchor="middle", transform=f"rotate(-90 16 {mid})"))
    return out


def x_axis(x: Scale, label: str, fmt) -> list[str]:
    base = HEIGHT - BOTTOM
    out = [el("line", x1=LEFT, x2=WIDTH - RIGHT, y1=base, y2=base, stroke="black")]
    for t in nice_ticks(x.lo, x.hi):
        out.append(el("line", x1=x(t), x2=x(t), y1=base, y2=base + 4, stroke="black"))
        out.append(el("text", fmt(t), x=x(t), y=base + 16, text_anchor="middle"))
    out.append(el("text", label, x=(LEFT + WIDTH - RIGHT) / 2, y=HEIGHT - 12, text_anchor="middle"))
    return out


def legend(entries: list[tuple[str, str]]) -> list[str]:
    x0 = WIDTH - RIGHT + 14
    out = []
    for i, (name, color) in enumerate(entries):
        y = TOP + 8 + 16 * i
        out.append(el("rect", x=x0, y=y - 9, width=10, height=10, fill=color))
        out.append(el("text", name, x=x0 + 15, y=y))
    return out


def fmt_bytes(v: float) -> str:
    return f"{v / 1e6:g} MB" if v >= 1e6 else f"{v / 1e3:g} kB" if v >= 1e3 else f"{v:g} B"


def fmt_num(v: float) -> str:
    return f"{v:.4g}"


def loss_figure(curves: dict) -> str:
    """curves: {seed: [(step, loss), ...]}: one polyline per seed with one point per step record."""
    steps = [s for points in curves.values() for s, _ in points]
    losses = [v for points in curves.values() for _, v in points]
    x = Scale.fit(steps, LEFT, WIDTH - RIGHT, pad=0.0, zero=True)
    y = Scale.fit(losses, HEIGHT - BOTTOM, TOP)
    body = y_axis(y, "train loss (nats/token)", fmt_num) + x_axis(x, "step", fmt_num)
    for i, (seed, points) in enumerate(curves.items()):
        coords = " ".join(f"{x(s)},{y(v)}" for s, v in points)
        color = COLORS[i % len(COLORS)]
        body.append(el("polyline", points=coords, fill="none", stroke=color, stroke_width=1.5, data_seed=seed))
    body += legend([(f"seed {seed}", COLORS[i % len(COLORS)]) for i, seed in enumerate(curves)])
    return document("Training loss", body)


def size_figure(sizes: dict) -> str:
    """sizes: {(preset, seed): size.json}: one stacked bar per row, a segment per stream, then the code."""
    parts = list(dict.fromkeys(name for s in sizes.values() for name in s["streams"])) + ["code"]
    color = {name: COLORS[i % len(COLORS)] for i, name in enumerate(parts)}
    cap = next(iter(sizes.values()))["cap_bytes"]
    totals = [s["total_bytes"] for s in sizes.values()]
    x = Scale.fit(totals + ([cap] if max(totals) > cap / 2 else []), LEFT + 60, WIDTH - RIGHT - 110, zero=True)
    row = (HEIGHT - BOTTOM - TOP) / len(sizes)
    body = x_axis(x, "bytes", fmt_bytes)
    for r, ((preset, seed), s) in enumerate(sizes.items()):
        top, start = TOP + r * row + 0.15 * row, 0
        body.append(el("text", f"{preset} s{seed}", x=LEFT + 54, y=top + 0.35 * row + 4, text_anchor="end"))
        for name, size in [*s["streams"].items(), ("code", s["code_bytes"])]:
            body.append(tooltip(
                "rect", f"{preset} seed {seed}: {name} {size:,} bytes", x=x(start), y=round(top, 2),
                width=round(x(start + size) - x(start), 2), height=round(0.7 * row, 2), fill=color[name],
                data_stream=name, data_bytes=size, data_preset=preset, data_seed=seed,
            ))
            start += size
        body.append(el("text", f"headroom {s['headroom_bytes']:,}", x=x(start) + 4, y=top + 0.35 * row + 4))
    if cap <= x.hi:
        body.append(el("line", x1=x(cap), x2=x(cap), y1=TOP, y2=HEIGHT - BOTTOM, stroke="red", stroke_dasharray="4 3"))
        body.append(el("text", "16 MB cap", x=x(cap), y=TOP - 4, text_anchor="middle", fill="red"))
    body += legend([(name, color[name]) for name in parts])
    return document("Artifact size by stream", body)


def stage_values(ev: dict) -> dict:
    """bpb by stage of one eval.json (TTT absent when it was off)."""
    values = {stage: ev[stage]["val_bpb"] for stage in ("prequant", "quantized", "ttt") if ev.get(stage)}
    values["final"] = ev["final_bpb"]
    return values


def bpb_figure(evals: dict) -> str:
    """evals: {(preset, seed): eval.json}: per stage a bar per preset (mean over seeds) with a dot per seed."""
    presets = list(dict.fromkeys(p for p, _ in evals))
    values = {key: stage_values(ev) for key, ev in evals.items()}
    y = Scale.fit([v for vals in values.values() for v in vals.values()], HEIGHT - BOTTOM, TOP, pad=0.15)
    body = y_axis(y, "bits per byte", fmt_num)
    group = (WIDTH - RIGHT - LEFT) / len(STAGES)
    bar = 0.8 * group / len(presets)
    for g, (stage, label) in enumerate(STAGES):
        x0 = LEFT + g * group + 0.1 * group
        body.append(el("text", label, x=LEFT + (g + 0.5) * group, y=HEIGHT - BOTTOM + 16, text_anchor="middle"))
        for i, preset in enumerate(presets):
            seeds = [vals[stage] for (p, _), vals in values.items() if p == preset and stage in vals]
            if not seeds:
                continue
            mean, left = sum(seeds) / len(seeds), x0 + i * bar
            body.append(tooltip(
                "rect", f"{preset} {label}: {mean:.5f} bpb (mean of {len(seeds)} seeds)", x=round(left, 2),
                y=y(mean), width=round(0.9 * bar, 2), height=round(HEIGHT - BOTTOM - y(mean), 2),
                fill=COLORS[i % len(COLORS)], data_stage=stage, data_preset=preset, data_bpb=f"{mean:.6f}",
            ))
            body.append(el("text", f"{mean:.4f}", x=round(left + 0.45 * bar, 2), y=y(mean) - 4,
                           text_anchor="middle", font_size=9))
            body += [el("circle", cx=round(left + 0.45 * bar, 2), cy=y(v), r=2.5, fill="black") for v in seeds]
    body.append(el("line", x1=LEFT, x2=WIDTH - RIGHT, y1=HEIGHT - BOTTOM, y2=HEIGHT - BOTTOM, stroke="black"))
    body += legend([(p, COLORS[i % len(COLORS)]) for i, p in enumerate(presets)])
    return document("Bits per byte by stage", body)


def presets_figure(sizes: dict, evals: dict) -> str:
    """One point per preset and seed: total bytes (size.json) against final bpb (eval.json)."""
    presets = list(dict.fromkeys(p for p, _ in sizes))
    points = {key: (sizes[key]["total_bytes"], evals[key]["final_bpb"]) for key in sizes}
    cap = next(iter(sizes.values()))["cap_bytes"]
    totals = [b for b, _ in points.values()]
    x = Scale.fit(totals + ([cap] if max(totals) > 0.98 * cap else []), LEFT, WIDTH - RIGHT, pad=0.1)
    y = Scale.fit([v for _, v in points.values()], HEIGHT - BOTTOM, TOP, pad=0.15)
    body = y_axis(y, "final bits per byte", fmt_num) + x_axis(x, "total bytes (model.pgrp + code)", fmt_bytes)
    if x.lo <= cap <= x.hi:
        body.append(el("line", x1=x(cap), x2=x(cap), y1=TOP, y2=HEIGHT - BOTTOM, stroke="red", stroke_dasharray="4 3"))
    labelled = set()
    for (preset, seed), (size, bpb) in points.items():
        i = presets.index(preset)
        body.append(tooltip(
            "circle", f"{preset} seed {seed}: {size:,} bytes, {bpb:.5f} bpb", cx=x(size), cy=y(bpb), r=5,
            fill=COLORS[i % len(COLORS)], data_preset=preset, data_seed=seed, data_bytes=size, data_bpb=bpb,
        ))
        if preset not in labelled:  # one label per preset; the seeds' points sit close together
            body.append(el("text", preset, x=x(size) + 7, y=y(bpb) + 4))
            labelled.add(preset)
    body += legend([(p, COLORS[i % len(COLORS)]) for i, p in enumerate(presets)])
    return document("Presets: size against final bpb", body)


def capfit_points(fit: dict) -> dict:
    """The data of the capfit figure from one capfit.json: every candidate's (total bytes, proxy, status), the
    winner's id, the target and the cap (kept apart from the drawing, which any plotting code can redo)."""
    return {
        "points": [(c["total_bytes"], c["proxy"], c["status"], c["id"], c["settings"]) for c in fit["candidates"]],
        "winner": fit["winner"],
        "target": fit["target_bytes"],
        "cap": fit["cap_bytes"],
    }


CAPFIT_COLORS = {"winner": "#d62728", "fits": "#1f77b4", "over_target": "#7f7f7f", "check_failed": "#ff7f0e"}


def capfit_figure(fits: dict) -> str:
    """fits: {seed: capfit.json}: every candidate's exact total bytes against its proxy (log scale), the target
    and the cap as vertical lines, the winner in red; one panel's worth of points per seed, told apart by shape."""
    data = {seed: capfit_points(fit) for seed, fit in fits.items()}
    points = [p for d in data.values() for p in d["points"]]
    lines = {"target": next(iter(data.values()))["target"], "16 MB cap": next(iter(data.values()))["cap"]}
    totals = [b for b, *_ in points]
    near = [v for v in lines.values() if v <= 1.5 * max(totals)]  # a far-away cap would squash the points
    x = Scale.fit(totals + near, LEFT, WIDTH - RIGHT, pad=0.05)
    logs = [math.log10(max(proxy, 1e-30)) for _, proxy, *_ in points]
    y = Scale.fit(logs, HEIGHT - BOTTOM, TOP, pad=0.1)
    body = y_axis(y, "proxy: log10 of summed tr(E·H·Eᵀ)", fmt_num)
    body += x_axis(x, "total bytes (model.pgrp + train_gpt.py)", fmt_bytes)
    for label, value in lines.items():
        if x.lo <= value <= x.hi:
            color = "red" if label == "16 MB cap" else "black"
            body.append(el("line", x1=x(value), x2=x(value), y1=TOP, y2=HEIGHT - BOTTOM, stroke=color,
                           stroke_dasharray="4 3"))
            body.append(el("text", label, x=x(value), y=TOP - 4, text_anchor="middle", fill=color))
    for s, (seed, d) in enumerate(data.items()):
        for size, proxy, status, cid, settings in d["points"]:
            winner = cid == d["winner"]
            tip = f"seed {seed} candidate {cid} ({status}): {size:,} bytes, proxy {proxy:.6g}, {settings}"
            attrs = dict(fill=CAPFIT_COLORS[status], data_seed=seed, data_bytes=size, data_proxy=proxy,
                         data_status=status)
            cx, cy = x(size), y(math.log10(max(proxy, 1e-30)))
            if s % 2:
                body.append(tooltip("rect", tip, x=cx - 3, y=cy - 3, width=6, height=6, **attrs))
            else:
                body.append(tooltip("circle", tip, cx=cx, cy=cy, r=6 if winner else 3.5, **attrs))
            if winner:
                body.append(el("text", f"winner s{seed}", x=cx + 8, y=cy + 4))
    body += legend([(status.replace("_", " "), color) for status, color in CAPFIT_COLORS.items()])
    return document("Cap-fit: size against predicted loss increase", body)


def step_records(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        raise PgolfError(f"{path}: file not found; run the train stage first")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    points = [(r["step"], r["loss"]) for r in records if r.get("event") == "step"]
    if not points:
        raise PgolfError(f"{path}: no step records; lower train.log_every or re-run the train stage")
    return points


def figures(run_dir, seeds, presets) -> dict:
    """SVG text of every figure, keyed by file stem."""
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
    """{"capfit": SVG text} from every seed's quant/capfit/capfit.json."""
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
    for name, svg in made.items():
        write_bytes(Path(args.out_dir) / f"{name}.svg", svg.encode())


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
