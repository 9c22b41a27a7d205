"""pgolf.report on small synthetic stage outputs: SVG files, and marks that match the JSON they come from.

pytest tests/test_report.py
"""

import json
import xml.etree.ElementTree as ET

import pytest

from pgolf.errors import PgolfError
from pgolf.report import capfit_figures, figures, main

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
            size = {
                "streams": streams,
                "code_bytes": 20_000,
                "model_bytes": total - 20_000,
                "total_bytes": total,
                "cap_bytes": 16_000_000,
                "headroom_bytes": 16_000_000 - total,
            }
            quant.joinpath("size.json").write_text(json.dumps(size))
            quant.joinpath("eval.json").write_text(json.dumps(eval_json(0.001 * p + 0.0005 * s, ttt=p == 0)))
    return run


def build(run_dir, out_dir):
    main(["--run-dir", str(run_dir), "--seeds", *SEEDS, "--presets", *PRESETS, "--out-dir", str(out_dir)])
    return {name: ET.parse(out_dir / f"{name}.svg").getroot() for name in ("loss", "size", "bpb", "presets")}


def artists(fig, gid):
    """The marks of a figure (lines, bars, point collections) whose gid is `gid`."""
    return [a for a in fig.findobj() if a.get_gid() == gid]


def test_figures_are_svg_documents_with_their_marks(run_dir, tmp_path):
    roots = build(run_dir, tmp_path / "report")
    for root in roots.values():
        assert root.tag == SVG + "svg"
    ids = {name: {e.get("id") for e in root.iter() if e.get("id")} for name, root in roots.items()}
    assert {f"loss/seed{s}" for s in SEEDS} <= ids["loss"]
    assert {f"size/{p}/seed{s}/{k}" for p in PRESETS for s in SEEDS for k in [*STREAMS, "code"]} <= ids["size"]
    assert {"bpb/record/ttt", "bpb/awq/final"} <= ids["bpb"] and "bpb/awq/ttt" not in ids["bpb"]
    assert {f"presets/{p}" for p in PRESETS} <= ids["presets"]


def test_the_same_outputs_draw_the_same_files(run_dir, tmp_path):
    build(run_dir, tmp_path / "a")
    build(run_dir, tmp_path / "b")
    for name in ("loss", "size", "bpb", "presets"):
        assert (tmp_path / "a" / f"{name}.svg").read_bytes() == (tmp_path / "b" / f"{name}.svg").read_bytes()


def test_loss_curve_has_a_point_per_step_record(run_dir):
    fig = figures(run_dir, list(SEEDS), PRESETS)["loss"]
    for s, (seed, n_steps) in enumerate(SEEDS.items()):
        (line,) = artists(fig, f"loss/seed{seed}")
        assert list(line.get_xdata()) == [10 * (i + 1) for i in range(n_steps)]
        assert list(line.get_ydata()) == pytest.approx([6.0 - 0.4 * i - 0.1 * s for i in range(n_steps)])


def test_size_has_a_bar_per_stream_and_code(run_dir):
    fig = figures(run_dir, list(SEEDS), PRESETS)["size"]
    for seed in SEEDS:
        for p, preset in enumerate(PRESETS):
            expected = [v + 1000 * p for v in STREAMS.values()] + [20_000]
            bars = [artists(fig, f"size/{preset}/seed{seed}/{k}")[0] for k in [*STREAMS, "code"]]
            assert [b.get_width() for b in bars] == expected  # drawn to scale, in bytes
            assert [b.get_x() for b in bars] == [sum(expected[:i]) for i in range(len(expected))]  # stacked
    (cap,) = artists(fig, "size/cap") or [None]
    assert cap is None  # 200 kB totals: the 16 MB cap would squash the bars


def test_bpb_has_a_bar_per_stage_and_preset(run_dir):
    fig = figures(run_dir, list(SEEDS), PRESETS)["bpb"]
    drawn = {
        p: [st for st in ("prequant", "quantized", "ttt", "final") if artists(fig, f"bpb/{p}/{st}")] for p in PRESETS
    }
    assert drawn == {"record": ["prequant", "quantized", "ttt", "final"], "awq": ["prequant", "quantized", "final"]}
    (final,) = artists(fig, "bpb/record/final")
    assert final.get_height() == pytest.approx(1.058 + 0.0005 / 2)  # mean over the two seeds
    (dots,) = artists(fig, "bpb/record/final/seeds")
    assert sorted(dots.get_offsets()[:, 1]) == pytest.approx([1.058, 1.0585])


def test_presets_plot_has_a_point_per_preset_and_seed(run_dir):
    fig = figures(run_dir, list(SEEDS), PRESETS)["presets"]
    total = sum(STREAMS.values()) + 20_000
    for p, preset in enumerate(PRESETS):
        (points,) = artists(fig, f"presets/{preset}")
        finals = [json.loads((run_dir / f"seed{s}/quant/{preset}/eval.json").read_text())["final_bpb"] for s in SEEDS]
        offsets = points.get_offsets()
        assert list(offsets[:, 0]) == [total + 4000 * p] * len(SEEDS)
        assert list(offsets[:, 1]) == pytest.approx(finals)


def test_missing_eval_names_the_file(run_dir, tmp_path):
    (run_dir / "seed2" / "quant" / "awq" / "eval.json").unlink()
    with pytest.raises(PgolfError, match="seed2/quant/awq/eval.json"):
        build(run_dir, tmp_path / "report")
    assert not (tmp_path / "report" / "bpb.svg").exists()


def test_capfit_figure_has_every_candidate_the_target_and_the_winner(tmp_path):
    run = tmp_path / "results" / "synthetic"
    candidates = [  # (total bytes, proxy, status)
        (90_000, 40.0, "fits"),
        (100_000, 9.0, "winner"),
        (104_000, 5.0, "check_failed"),
        (130_000, 1.0, "over_target"),
    ]
    fit = {
        "target_bytes": 105_000,
        "cap_bytes": 16_000_000,
        "winner": 1,
        "candidates": [
            {"id": i, "total_bytes": b, "proxy": p, "status": s, "settings": {"attn": [6, 13.0]}}
            for i, (b, p, s) in enumerate(candidates)
        ],
    }
    (run / "seed1" / "quant" / "capfit").mkdir(parents=True)
    (run / "seed1" / "quant" / "capfit" / "capfit.json").write_text(json.dumps(fit))
    fig = capfit_figures(run, ["1"])["capfit"]
    for size, proxy, status in candidates:
        (points,) = artists(fig, f"capfit/seed1/{status}")
        assert points.get_offsets().tolist() == [[size, proxy]]
    sizes = {status: artists(fig, f"capfit/seed1/{status}")[0].get_sizes()[0] for _, _, status in candidates}
    assert sizes["winner"] > sizes["fits"]
    (target,) = artists(fig, "capfit/target")
    assert list(target.get_xdata()) == [105_000, 105_000]
    assert artists(fig, "capfit/cap") == []  # the cap is far off: drawing it would squash the points
    assert fig.axes[0].get_yscale() == "log"
    assert [t.get_text() for t in fig.axes[0].texts] == [" winner s1"]
    main(["--run-dir", str(run), "--seeds", "1", "--capfit", "--out-dir", str(tmp_path / "report")])
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["capfit.svg"]
    ids = {e.get("id") for e in ET.parse(tmp_path / "report" / "capfit.svg").getroot().iter() if e.get("id")}
    assert {f"capfit/seed1/{status}" for _, _, status in candidates} | {"capfit/target"} <= ids
