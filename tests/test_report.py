"""pgolf.report on small synthetic stage outputs: well-formed SVG whose marks match the JSON they come from.

    pytest tests/test_report.py
"""

import json
import xml.etree.ElementTree as ET

import pytest

from pgolf.errors import PgolfError
from pgolf.report import main, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"
SEEDS = {"1": 7, "2": 4}  # seed -> step records in its log
PRESETS = ["record", "awq"]
STREAMS = {"attn": 40_000, "mlp": 90_000, "embed": 30_000, "remainder": 5_000}


def eval_json(offset: float, ttt: bool) -> dict:
    out = {
        "prequant": {"val_loss": 2.30, "val_bpb": 1.060 + offset},
        "quantized": {"val_loss": 2.33, "val_bpb": 1.070 + offset},
        "ttt": {"val_loss": 2.31, "val_bpb": 1.058 + offset} if ttt else None,
    }
    out["final_bpb"] = out["ttt"]["val_bpb"] if ttt else out["quantized"]["val_bpb"]
    return out


@pytest.fixture
def run_dir(tmp_path):
    """results/<name> with every seed's train log and every preset's size.json and eval.json."""
    run = tmp_path / "results" / "synthetic"
    for s, (seed, n_steps) in enumerate(SEEDS.items()):
        train = run / f"seed{seed}" / "train"
        train.mkdir(parents=True)
        records = [{"event": "start", "config": {}}, {"event": "looping_enabled", "step": 3}]
        records += [{"event": "step", "step": 10 * (i + 1), "loss": 6.0 - 0.4 * i - 0.1 * s} for i in range(n_steps)]
        train.joinpath("log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        for p, preset in enumerate(PRESETS):
            quant = run / f"seed{seed}" / "quant" / preset
            quant.mkdir(parents=True)
            streams = {k: v + 1000 * p for k, v in STREAMS.items()}
            total = sum(streams.values()) + 20_000
            size = {"streams": streams, "code_bytes": 20_000, "artifact_bytes": total - 20_000,
                    "total_bytes": total, "cap_bytes": 16_000_000, "headroom_bytes": 16_000_000 - total}
            quant.joinpath("size.json").write_text(json.dumps(size))
            quant.joinpath("eval.json").write_text(json.dumps(eval_json(0.001 * p + 0.0005 * s, ttt=p == 0)))
    return run


def build(run_dir, out_dir):
    main(["--run-dir", str(run_dir), "--seeds", *SEEDS, "--presets", *PRESETS, "--out-dir", str(out_dir)])
    return {name: ET.parse(out_dir / f"{name}.svg").getroot() for name in ("loss", "size", "bpb", "presets")}


def marks(root, tag, **data):
    """Elements of `tag` whose data-* attributes equal `data`."""
    found = root.iter(SVG + tag)
    return [e for e in found if all(e.get(f"data-{k}") == str(v) for k, v in data.items())]


def test_figures_are_svg_documents(run_dir, tmp_path):
    for root in build(run_dir, tmp_path / "report").values():
        assert root.tag == SVG + "svg"
        assert root.find(SVG + "title").text


def test_loss_curve_has_a_point_per_step_record(run_dir, tmp_path):
    loss = build(run_dir, tmp_path / "report")["loss"]
    for seed, n_steps in SEEDS.items():
        (line,) = marks(loss, "polyline", seed=seed)
        points = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
        assert len(points) == n_steps
        xs, ys = zip(*points)
        assert list(xs) == sorted(xs)  # steps go right
        assert list(ys) == sorted(ys)  # falling loss goes down the page (SVG y grows downwards)


def test_size_has_a_bar_per_stream_and_code(run_dir, tmp_path):
    size = build(run_dir, tmp_path / "report")["size"]
    for seed in SEEDS:
        for p, preset in enumerate(PRESETS):
            bars = marks(size, "rect", preset=preset, seed=seed)
            assert [b.get("data-stream") for b in bars] == [*STREAMS, "code"]
            assert [int(b.get("data-bytes")) for b in bars] == [v + 1000 * p for v in STREAMS.values()] + [20_000]
            widths = [float(b.get("width")) for b in bars]
            assert widths[1] > widths[0] > widths[2]  # mlp > attn > embed, drawn to scale


def test_bpb_has_a_bar_per_stage_and_preset(run_dir, tmp_path):
    bpb = build(run_dir, tmp_path / "report")["bpb"]
    stages = {p: [b.get("data-stage") for b in marks(bpb, "rect", preset=p)] for p in PRESETS}
    assert stages == {"record": ["prequant", "quantized", "ttt", "final"], "awq": ["prequant", "quantized", "final"]}
    (final,) = marks(bpb, "rect", preset="record", stage="final")
    assert float(final.get("data-bpb")) == pytest.approx(1.058 + 0.0005 / 2)  # mean over the two seeds
    (quantized,) = marks(bpb, "rect", preset="record", stage="quantized")
    assert float(quantized.get("height")) > float(final.get("height"))


def test_presets_plot_has_a_point_per_preset_and_seed(run_dir, tmp_path):
    presets = build(run_dir, tmp_path / "report")["presets"]
    points = marks(presets, "circle")
    assert sorted((c.get("data-preset"), c.get("data-seed")) for c in points) == sorted(
        (p, s) for p in PRESETS for s in SEEDS
    )
    (awq,) = marks(presets, "circle", preset="awq", seed="1")
    (record,) = marks(presets, "circle", preset="record", seed="1")
    assert float(awq.get("cx")) > float(record.get("cx"))  # more bytes lie further right


def test_missing_eval_names_the_file(run_dir, tmp_path):
    (run_dir / "seed2" / "quant" / "awq" / "eval.json").unlink()
    with pytest.raises(PgolfError, match="seed2/quant/awq/eval.json"):
        build(run_dir, tmp_path / "report")
    assert not (tmp_path / "report" / "bpb.svg").exists()


def test_nice_ticks():
    assert nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(1.0512, 1.0731) == pytest.approx([1.055, 1.06, 1.065, 1.07])


def test_capfit_plot_has_every_candidate_the_target_and_the_winner(tmp_path):
    run = tmp_path / "results" / "synthetic"
    candidates = [  # (total bytes, proxy, status)
        (90_000, 40.0, "fits"), (100_000, 9.0, "winner"), (104_000, 5.0, "check_failed"), (130_000, 1.0, "over_target")
    ]
    fit = {
        "target_bytes": 105_000, "cap_bytes": 16_000_000, "winner": 1,
        "candidates": [{"id": i, "total_bytes": b, "proxy": p, "status": s, "settings": {"attn": [6, 13.0]}}
                       for i, (b, p, s) in enumerate(candidates)],
    }
    (run / "seed1" / "quant" / "capfit").mkdir(parents=True)
    (run / "seed1" / "quant" / "capfit" / "capfit.json").write_text(json.dumps(fit))
    main(["--run-dir", str(run), "--seeds", "1", "--capfit", "--out-dir", str(tmp_path / "report")])
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["capfit.svg"]
    root = ET.parse(tmp_path / "report" / "capfit.svg").getroot()
    points = marks(root, "circle", seed="1")
    assert [(int(c.get("data-bytes")), float(c.get("data-proxy")), c.get("data-status")) for c in points] == candidates
    xs = [float(c.get("cx")) for c in points]
    ys = [float(c.get("cy")) for c in points]
    assert xs == sorted(xs) and ys == sorted(ys)  # more bytes further right, a lower proxy further down
    (winner,) = marks(root, "circle", status="winner")
    assert float(winner.get("r")) > float(points[0].get("r"))
    labels = {t.text: t for t in root.iter(SVG + "text")}
    assert "winner s1" in labels and "target" in labels and "16 MB cap" not in labels  # the cap is far off
    target_x = float(labels["target"].get("x"))
    assert xs[2] < target_x < xs[3]
