"""quantize_state / dequantize_state on a real (tiny) model, the quantized.pt contract, presets and the CLI."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pgolf.cli import run_cli
from pgolf.errors import PgolfError
from pgolf.hessians import HessianSums
from pgolf.model import GPT, ModelConfig
from pgolf.quant import Preset, dequantize_state, quantize_state
from pgolf.quant.state import h_weighted_error
from pgolf.quantize import load_hessians
from pgolf.quantize import main as quantize_main

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(
    vocab_size=128,
    num_layers=3,
    model_dim=64,
    num_heads=8,
    num_kv_heads=4,
    mlp_mult=2.0,
    rope_dims=8,
    xsa_last_n=3,
    num_loops=1,
    loop_start=1,
    loop_end=1,
    parallel_start_layer=2,
    train_seq_len=32,
)
MATRIX = re.compile(r"^(tok_emb\.weight|blocks\.\d+\.(attn\.(c_q|c_k|c_v|proj)|mlp\.(fc|proj))\.weight)$")


@pytest.fixture(scope="module")
def trained():
    """A tiny model with every weight perturbed (no zero matrices, open gates) and its Hessians."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    model.looping = True
    sums = HessianSums()
    ids = torch.randint(2, 128, (4, 32))
    ids[:, 0] = 1
    with torch.no_grad():
        model(ids, capture=sums)
    return model, sums.result(total_batches=1)


@pytest.fixture(scope="module")
def record(trained):
    """The record preset's quantized state and report."""
    model, hessians = trained
    return quantize_state(
        model.unbanked_state_dict(), hessians, Preset(), model_config=dataclasses.asdict(model.config)
    )


def preset(**changes):
    values = {"lqer": {"top_k": 2}, "awq": {"enabled": False}}
    values.update(changes)
    return Preset.parse(values)


def test_round_trip_keeps_names_shapes_and_loads_into_the_model(trained, record):
    model, _ = trained
    state = model.unbanked_state_dict()
    quantized, report = record
    restored = dequantize_state(quantized)
    assert list(restored) == list(state)
    for name, t in state.items():
        assert restored[name].shape == t.shape and restored[name].dtype == torch.float32, name
        rel = (restored[name] - t).norm() / t.norm().clamp_min(1e-12)
        assert rel < 0.25, name  # int6 at 13 sigmas: steps of 0.42 std
    rebuilt = GPT.from_unbanked(ModelConfig(**quantized["config"]), restored)
    rebuilt.eval()
    ids = torch.randint(2, 128, (1, 16))
    with torch.no_grad():
        assert torch.isfinite(rebuilt(ids)).all()
    assert set(report["tensors"]) == set(state) and report["seconds"] >= 0


def test_storage_follows_the_quantized_pt_contract(trained, record):
    model, _ = trained
    state = model.unbanked_state_dict()
    quantized, _ = record
    tensors, meta = quantized["tensors"], quantized["meta"]
    matrices = [n for n in state if MATRIX.match(n)]
    assert len(matrices) == 6 * 3 + 1
    for name in matrices:
        q, scale = tensors[f"{name}.q"], tensors[f"{name}.scale"]
        assert q.dtype == torch.int8 and q.shape == state[name].shape
        assert scale.dtype == torch.float16 and scale.shape == (state[name].shape[0],)
        limit = 63 if name == "tok_emb.weight" else 31
        assert int(q.abs().max()) <= limit
        assert meta[name].startswith("gptq (int7)" if name == "tok_emb.weight" else "gptq (int6)")
    gate = "blocks.0.attn.attn_gate_w"  # 8 x 12: int8 per row with scale max|row| / 127
    assert meta[gate] == "int8 per row" and tensors[f"{gate}.q"].dtype == torch.int8
    torch.testing.assert_close(tensors[f"{gate}.scale"], (state[gate].abs().amax(1) / 127).half())
    small = [n for n in state if not MATRIX.match(n) and n != gate and "attn_gate_w" not in n]
    for name in small:
        assert meta[name] == "passthrough (fp16)" and tensors[name].dtype == torch.float16, name
    assert set(meta) == set(state)


def test_lqer_picks_the_largest_errors_and_lowers_them(trained, record):
    model, hessians = trained
    state = model.unbanked_state_dict()
    plain, plain_report = quantize_state(state, hessians, preset(lqer={"enabled": False}))
    quantized, report = record
    by_error = sorted((n for n in state if MATRIX.match(n)), key=lambda n: -plain_report["tensors"][n]["frob_error"])
    assert report["lqer_picks"] == by_error[:3]
    restored, restored_plain = dequantize_state(quantized), dequantize_state(plain)
    for name in report["lqer_picks"]:
        row = report["tensors"][name]
        assert quantized["meta"][name].endswith("+lqer_asym") and row["lqer"] == "lqer_asym"
        after, before = (state[name] - restored[name]).norm(), (state[name] - restored_plain[name]).norm()
        assert after < before
        assert row["frob_error"] == pytest.approx(float(after), rel=1e-4)
        assert row["frob_error_gptq"] == pytest.approx(float(before), rel=1e-4)
        assert row["h_error"] < row["h_error_gptq"]
        for suffix, dtype in (
            ("lqA_a", torch.int8),
            ("lqAs_a", torch.float16),
            ("lqB_a", torch.int8),
            ("lqBs_a", torch.float16),
        ):
            assert quantized["tensors"][f"{name}.{suffix}"].dtype == dtype
    untouched = [n for n in state if MATRIX.match(n) and n not in report["lqer_picks"]]
    for name in untouched:
        torch.testing.assert_close(restored[name], restored_plain[name])


def test_lqer_falls_back_to_symmetric_factors(trained):
    model, hessians = trained
    quantized, report = quantize_state(model.unbanked_state_dict(), hessians, preset(lqer={"top_k": 1, "group": 48}))
    name = report["lqer_picks"][0]
    assert quantized["meta"][name].endswith("+lqer_sym") and f"{name}.lqB" in quantized["tensors"]
    assert report["tensors"][name]["frob_error"] < report["tensors"][name]["frob_error_gptq"]


def test_awq_group_is_stored_at_int8_and_dequantizes(trained):
    model, hessians = trained
    state = model.unbanked_state_dict()
    quantized, report = quantize_state(
        state, hessians, preset(awq={"enabled": True, "top_k": 2, "group": 32}, lqer={"enabled": False})
    )
    assert len(report["awq_picks"]) == 2
    scores = [g["score"] for g in report["awq_picks"]]
    assert scores == sorted(scores, reverse=True)
    restored = dequantize_state(quantized)
    tensors = quantized["tensors"]
    for pick in report["awq_picks"]:
        name, start, size = pick["name"], pick["start"], pick["size"]
        assert "+awq (int8)" in quantized["meta"][name]
        assert tensors[f"{name}.awqg_start"].dtype == torch.int16 and tensors[f"{name}.awqg_size"].dtype == torch.int16
        s_hi = tensors[f"{name}.awqg_s_hi"]
        assert s_hi.dtype == torch.float16 and s_hi.shape == (state[name].shape[0],)
        cols = slice(start, start + size)
        q = tensors[f"{name}.q"][:, cols]
        torch.testing.assert_close(restored[name][:, cols], q.float() * s_hi.float()[:, None])
        assert int(q.abs().max()) <= 127
    saliency = {}
    for name in (n for n in state if MATRIX.match(n)):
        s = hessians["act_rms"][name] * state[name].abs().mean(0)
        for start in range(0, s.numel(), 32):
            saliency[(name, start)] = float(s[start : start + 32].sum())
    best = sorted(saliency, key=lambda k: -saliency[k])[:2]
    assert [(p["name"], p["start"]) for p in report["awq_picks"]] == best


def test_report_errors_match_the_dequantized_state(trained, record):
    model, hessians = trained
    state = model.unbanked_state_dict()
    quantized, report = record
    restored = dequantize_state(quantized)
    name = "blocks.1.mlp.proj.weight"
    E = state[name] - restored[name]
    assert report["tensors"][name]["h_error"] == pytest.approx(h_weighted_error(E, hessians[name]), rel=1e-4)
    assert report["h_error"] <= report["h_error_gptq"]


def test_bad_inputs_are_clear_errors(trained, record):
    model, hessians = trained
    state = model.unbanked_state_dict()
    partial = {k: v for k, v in hessians.items() if k != "blocks.2.mlp.fc.weight"}
    with pytest.raises(PgolfError, match="blocks.2.mlp.fc.weight.*re-run the hessians stage"):
        quantize_state(state, partial, Preset())
    no_rms = {**hessians, "act_rms": {}}
    with pytest.raises(PgolfError, match="act_rms"):
        quantize_state(state, no_rms, preset(awq={"enabled": True}))
    with pytest.raises(PgolfError, match="no storage rule"):
        quantize_state({**state, "extra.table": torch.zeros(300, 300)}, hessians, Preset())
    with pytest.raises(PgolfError, match="unknown key"):
        Preset.parse({"mlp": {"bits": 6, "sigmas": 3}})
    with pytest.raises(PgolfError, match="unknown key"):
        Preset.parse({"lqr": {}})
    with pytest.raises(PgolfError, match="bits"):
        Preset.parse({"attn": {"bits": 9}})
    broken = {**record[0], "tensors": dict(record[0]["tensors"])}
    del broken["tensors"]["blocks.0.mlp.fc.weight.scale"]
    with pytest.raises(PgolfError, match="re-run the quantize stage"):
        dequantize_state(broken)


def test_partial_preset_takes_the_record_values():
    p = Preset.parse({"mlp": {"clip_sigmas": 12.0}, "awq": {"enabled": True}})
    assert (p.mlp.bits, p.mlp.clip_sigmas, p.attn.clip_sigmas, p.embed.bits) == (6, 12.0, 13.0, 7)
    assert p.awq.enabled and p.awq.group == 64 and p.lqer.top_k == 3


def test_config_yaml_record_preset_is_pr1855():
    quant = yaml.safe_load((ROOT / "config.yaml").read_text())["quant"]
    assert quant["presets"]["record"] == dataclasses.asdict(Preset())
    assert Preset.parse(quant["presets"]["awq"]).awq.enabled


def test_cli_writes_quantized_pt_and_report(trained, tmp_path):
    model, hessians = trained
    torch.save(
        {"config": dataclasses.asdict(model.config), "state_dict": model.unbanked_state_dict(), "train": {}},
        tmp_path / "model.pt",
    )
    torch.save(hessians, tmp_path / "hessians.pt")
    out = tmp_path / "quant" / "record" / "quantized.pt"
    config = {"preset": {"lqer": {"top_k": 1}}, "hardware": {"gpus": 0}}
    cmd = [
        sys.executable,
        "-m",
        "pgolf.quantize",
        "--config",
        json.dumps(config),
        "--model",
        str(tmp_path / "model.pt"),
        "--hessians",
        str(tmp_path / "hessians.pt"),
        "--preset",
        "record",
        "--out",
        str(out),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"tensors", "meta", "config"} and saved["config"] == dataclasses.asdict(model.config)
    report = json.loads(out.with_name("report.json").read_text())
    assert report["preset"] == "record" and len(report["lqer_picks"]) == 1
    assert report["settings"]["mlp"] == {"bits": 6, "clip_sigmas": 11.5}
    assert sorted(p.name for p in out.parent.iterdir()) == ["quantized.pt", "report.json"]


def test_cli_error_is_one_line_naming_the_fix(tmp_path, capsys):
    argv = [
        "--config",
        '{"preset": {}, "hardware": {"gpus": 0}}',
        "--model",
        str(tmp_path / "model.pt"),
        "--hessians",
        str(tmp_path / "hessians.pt"),
        "--preset",
        "record",
        "--out",
        str(tmp_path / "q.pt"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(quantize_main, argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and last.startswith("pgolf error") and "run the train stage" in last
    torch.save({}, tmp_path / "hessians.pt")
    with pytest.raises(PgolfError, match="not a hessians.pt"):
        load_hessians(tmp_path / "hessians.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hessians.pt"]


def test_1512_storage_rules():
    # #1512's preset: tok_emb and the #1019 tables in clipped int8 rows, the matrices through GPTQ's clip search
    from pgolf.quant.int8_clip import INT8_CLIP_QUANTILE

    cfg = dict(
        TINY,
        num_loops=0,
        parallel_start_layer=None,
        smear_gate=False,
        smear_per_dim=True,
        sparse_attn_gate=False,
        skip_gates=False,
        bigram_buckets=96,
        bigram_dim=16,
        value_embed_layers=[2],
    )
    torch.manual_seed(1)
    model = GPT(ModelConfig(**cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sums = HessianSums()
    with torch.no_grad():
        model.eval()(torch.randint(2, 128, (2, 32)), capture=sums)
    state = model.unbanked_state_dict()
    p = Preset.parse({"embed_plain_int8": True, "lqer": {"enabled": False}, "gptq": {"clip_percentiles": [0.999, 1.0]}})
    quantized, report = quantize_state(state, sums.result(1), p, model_config=dataclasses.asdict(model.config))
    meta = quantized["meta"]
    for name in ("tok_emb.weight", "bigram.embed.weight", "value_embed.embed.weight"):
        W = state[name].float()
        assert meta[name] == "int8 per row"
        clip = torch.quantile(W.abs(), INT8_CLIP_QUANTILE, dim=1)
        scale = (clip / 127).clamp_min(1 / 127)
        want = torch.clamp(torch.round(torch.clamp(W, -clip[:, None], clip[:, None]) / scale[:, None]), -127, 127)
        assert torch.equal(quantized["tensors"][f"{name}.q"].float(), want)
        assert torch.equal(quantized["tensors"][f"{name}.scale"], scale.half())
    assert meta["blocks.0.mlp.fc.weight"] == "gptq (int6)"
    assert meta["bigram.proj.weight"] == meta["value_embed.proj.weight"] == "passthrough (fp16)"
    back = dequantize_state(quantized)
    assert set(back) == set(state)
