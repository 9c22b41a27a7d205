"""pgolf.capfit on a tiny trained model: the winner against a brute-force loop, the check that takes the next
candidate, the preset file through the stage CLIs to size_check, config errors and config.yaml's defaults.

    pytest tests/test_capfit.py
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_quantize import trained  # noqa: F401 (the tiny model and its Hessians, a fixture)

from pgolf import capfit, codepack
from pgolf.capfit import CapfitConfig, candidate_presets, choose
from pgolf.config import narrow_config, resolve
from pgolf.errors import PgolfError
from pgolf.pack import pack
from pgolf.quant import quantize_state

ROOT = Path(__file__).resolve().parent.parent
SPACE = {  # 2 x 2 x 2 x 2 = 16 candidates, small enough to pack every one of them without any cache
    "attn": {"bits": [4, 6], "clip_sigmas": [13.0]},
    "mlp": {"bits": [4, 6], "clip_sigmas": [11.5]},
    "embed": {"bits": [6, 8], "clip_sigmas": [14.0]},
    "lqer_top_k": [0, 2],
}


def smoke_config(capfit_section: dict) -> dict:
    config = resolve([ROOT / "config.yaml", ROOT / "recipes/smoke.yaml"])
    config["quant"]["capfit"] = {**config["quant"]["capfit"], "enabled": True, **capfit_section}
    return config


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory):  # noqa: F811
    """model.pt and hessians.pt of the tiny model, as the train and hessians stages write them."""
    model, hessians = trained
    folder = tmp_path_factory.mktemp("capfit")
    torch.save(
        {"config": dataclasses.asdict(model.config), "state_dict": model.unbanked_state_dict(), "train": {}},
        folder / "model.pt",
    )
    torch.save(hessians, folder / "hessians.pt")
    return folder


@pytest.fixture(scope="module")
def brute_force(trained):  # noqa: F811
    """Every candidate of SPACE quantized, packed and scripted from scratch: [(preset, total bytes, proxy)]."""
    model, hessians = trained
    config = smoke_config({"space": SPACE})
    rows = []
    for values in candidate_presets(config["quant"]["presets"]["record"], CapfitConfig.parse({"space": SPACE}).space):
        quantized, report = quantize_state(
            model.unbanked_state_dict(), hessians, values, model_config=dataclasses.asdict(model.config)
        )
        script = codepack.build_script(capfit.code_config(config, values), capfit.PRESET)
        rows.append((values, len(pack(quantized)) + len(script), report["h_error"]))
    return rows


@pytest.fixture(scope="module")
def fitted(files, brute_force):
    """capfit.run on SPACE with a target that binds: the median of the brute-force totals."""
    target = sorted(total for _, total, _ in brute_force)[len(brute_force) // 2]
    config = smoke_config({"space": SPACE, "target_bytes": target})
    preset, result = capfit.run(config, files / "model.pt", files / "hessians.pt", torch.device("cpu"))
    return target, preset, result


def test_winner_is_the_brute_force_argmin_among_the_fitting(brute_force, fitted):
    target, preset, result = fitted
    fitting = [(proxy, total, values) for values, total, proxy in brute_force if total <= target]
    assert 0 < len(fitting) < len(brute_force)  # the target binds
    best_proxy, best_total, best = min(fitting, key=lambda row: (row[0], row[1]))
    assert preset == best
    winner = result["candidates"][result["winner"]]
    assert winner["chosen"] and winner["total_bytes"] == best_total <= target and winner["proxy"] == best_proxy
    assert result["checked"]["total_bytes"] == best_total  # packed and size-checked from scratch: the same bytes


def test_cached_search_equals_the_uncached_loop(brute_force, fitted):
    _, _, result = fitted
    assert [(c["total_bytes"], c["proxy"]) for c in result["candidates"]] == [(t, p) for _, t, p in brute_force]
    cache = result["cache"]
    assert cache["candidates"] == 16 and cache["gptq_run"] < cache["gptq_needed"] / 4  # each class setting once
    assert cache["groups_compressed"] == (4 + 2 + 1) * 2  # attn: 4 groups, mlp: 2, embed: 1; each at 2 settings


def test_capfit_json_accounts_for_every_candidate(fitted):
    target, _, result = fitted
    assert result["target_bytes"] == target and result["cap_bytes"] == 16_000_000 and result["margin_bytes"] is None
    assert result["space"]["lqer_top_k"] == [0, 2] and result["base"] == "record"
    assert [c["id"] for c in result["candidates"]] == list(range(16))
    winner = result["candidates"][result["winner"]]
    for c in result["candidates"]:
        assert set(c) >= {"settings", "model_bytes", "code_bytes", "total_bytes", "proxy", "chosen", "status", "why"}
        assert c["total_bytes"] == c["model_bytes"] + c["code_bytes"]
        assert c["chosen"] == (c is winner)
        if c["total_bytes"] > target:
            assert c["status"] == "over_target" and f"{c['total_bytes']:,}" in c["why"]
        elif c is not winner:
            assert c["status"] == "fits" and c["proxy"] >= winner["proxy"]
    assert {c["settings"]["lqer"] is None for c in result["candidates"]} == {False}  # the record has LQER on
    assert {tuple(c["settings"]["lqer"]) for c in result["candidates"]} == {(0, 4), (2, 4)}


def candidate(i, total, proxy):
    return {"id": i, "total_bytes": total, "proxy": proxy, "preset": {"id": i}, "settings": {}}


def test_a_failed_check_takes_the_next_candidate():
    candidates = [candidate(0, 95, 1.0), candidate(1, 99, 2.0), candidate(2, 90, 3.0), candidate(3, 120, 0.5)]
    checked = []

    def check(values):  # the first candidate packs 10 bytes larger than searched
        checked.append(values["id"])
        return {"total_bytes": candidates[values["id"]]["total_bytes"] + (10 if values["id"] == 0 else 0)}

    report = choose(candidates, 100, check)
    assert checked == [0, 1] and report == {"total_bytes": 99}
    assert [c["status"] for c in candidates] == ["check_failed", "winner", "fits", "over_target"]
    assert "105" in candidates[0]["why"] and "next candidate" in candidates[0]["why"]
    assert [c["chosen"] for c in candidates] == [False, True, False, False]


def test_nothing_fits_is_one_clear_error():
    with pytest.raises(PgolfError, match=r"no candidate fits the target of 50 bytes .* takes 90"):
        choose([candidate(0, 95, 1.0), candidate(1, 90, 2.0)], 50, lambda values: pytest.fail("checked"))
    with pytest.raises(PgolfError, match="missed it once packed for real"):
        choose([candidate(0, 95, 1.0)], 100, lambda values: {"total_bytes": 101})


def test_bad_capfit_config_names_the_key():
    with pytest.raises(PgolfError, match="quant.capfit.target_bytes: 16,000,001 is above the cap"):
        CapfitConfig.parse({"target_bytes": 16_000_001})
    with pytest.raises(PgolfError, match=r"quant.capfit.space.mlp: bits and clip_sigmas each need"):
        CapfitConfig.parse({"space": {"mlp": {"bits": []}}})
    with pytest.raises(PgolfError, match=r"quant.capfit.space: unknown key\(s\) \['lqer_topk'\]"):
        CapfitConfig.parse({"space": {"lqer_topk": [1]}})
    config = smoke_config({"base": "nope"})
    with pytest.raises(PgolfError, match="quant.capfit.base: 'nope' is not in quant.presets"):
        capfit.run(config, "model.pt", "hessians.pt", torch.device("cpu"))


def test_default_target_is_the_cap_minus_the_margin():
    assert CapfitConfig.parse({}).target == 16_000_000 - 10_000
    assert CapfitConfig.parse({"margin_bytes": 0}).target == 16_000_000
    assert CapfitConfig.parse({"target_bytes": 123}).target == 123


def test_config_yaml_mirrors_the_dataclass_defaults():
    section = yaml.safe_load((ROOT / "config.yaml").read_text())["quant"]["capfit"]
    assert section == dataclasses.asdict(CapfitConfig())
    assert dataclasses.asdict(CapfitConfig.parse(section)) == section


def test_candidates_are_distinct_presets_with_everything_spelled_out():
    base = resolve([ROOT / "config.yaml"])["quant"]["presets"]["record"]
    space = CapfitConfig.parse({"space": {"lqer_top_k": [3, 3], "awq": [False, True]}}).space
    presets = candidate_presets({**base, "lqer": {**base["lqer"], "enabled": False}}, space)
    assert len(presets) == 3 * 3 * 3 * 2  # the repeated top-k collapses
    assert {p["awq"]["enabled"] for p in presets} == {False, True}
    assert all(p["gptq"] == base["gptq"] and p["lqer"]["enabled"] is False for p in presets)


def run_stage(module, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
        check=False,
    )
    assert proc.returncode == 0, f"{module}: {proc.stderr[-3000:]}"


def test_stage_configs_through_the_stage_clis_give_the_searched_size(files, tmp_path):
    """The DAG's path of the capfit preset: capfit, then quantize and code with the --config files it wrote, pack,
    size_check."""
    config = smoke_config({"space": {**SPACE, "lqer_top_k": [2]}, "target_bytes": 15_000_000})
    out = tmp_path / "quant" / "capfit"
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(capfit.stage_config(config)))
    run_stage(
        "pgolf.capfit",
        "--config",
        config_path,
        "--model",
        files / "model.pt",
        "--hessians",
        files / "hessians.pt",
        "--out",
        out / "preset.json",
        cwd=tmp_path,
    )
    result = json.loads((out / "capfit.json").read_text())
    winner = result["candidates"][result["winner"]]
    assert winner["settings"] == {
        "attn": [6, 13.0],
        "mlp": [6, 11.5],
        "embed": [8, 14.0],
        "lqer": [2, 4],
        "awq": False,
    }  # everything fits: the most bits win
    preset = json.loads((out / "preset.json").read_text())
    assert json.loads((out / "quantize-config.json").read_text()) == {"preset": preset, "hardware": {"gpus": 0}}
    code_config = json.loads((out / "code-config.json").read_text())  # what the code rule gives a config.yaml preset
    assert code_config == narrow_config(capfit.with_preset(config, preset), "capfit")
    run_stage(
        "pgolf.quantize",
        "--config",
        out / "quantize-config.json",
        "--model",
        files / "model.pt",
        "--hessians",
        files / "hessians.pt",
        "--preset",
        "capfit",
        "--out",
        out / "quantized.pt",
        cwd=tmp_path,
    )
    run_stage(
        "pgolf.pack",
        "--no-baseline",
        "--quantized",
        out / "quantized.pt",
        "--compressor",
        config["pack"]["compressor"],
        "--out",
        out / "model.pgrp",
        cwd=tmp_path,
    )
    run_stage(
        "pgolf.codepack",
        "--config",
        out / "code-config.json",
        "--preset",
        "capfit",
        "--out",
        out / "train_gpt.py",
        cwd=tmp_path,
    )
    run_stage(
        "pgolf.sizecheck",
        "--pgrp",
        out / "model.pgrp",
        "--pack-json",
        out / "pack.json",
        "--code",
        out / "train_gpt.py",
        "--preset",
        "capfit",
        "--out",
        out / "size.json",
        cwd=tmp_path,
    )
    size = json.loads((out / "size.json").read_text())
    assert size["total_bytes"] == winner["total_bytes"] == result["checked"]["total_bytes"]
    assert size["code_bytes"] == winner["code_bytes"] and size["model_bytes"] == winner["model_bytes"]
    report = json.loads((out / "report.json").read_text())
    assert report["settings"] == json.loads((out / "preset.json").read_text())


MEMO_PRESETS = [  # what the memo keys must tell apart: bits, clip, AWQ, LQER ranks fixed and adaptive, gates
    {},
    {"attn": {"bits": 5}, "gates": {"int8": False}},
    {"attn": {"bits": 5, "clip_sigmas": 12.0}, "awq": {"enabled": True, "top_k": 2, "group": 32}},
    {"lqer": {"rank": 2, "top_k": 1}},
    {"lqer": {"adaptive": True, "ranks": [1, 2, 4], "budget_bytes": 3_000}},
    {"lqer": {"adaptive": True, "ranks": [1, 2, 4], "budget_bytes": 600}},
    {"attn": {"bits": 5}, "lqer": {"adaptive": True, "ranks": [1, 2, 4], "budget_bytes": 3_000}},
]


def test_memo_gives_every_preset_the_uncached_state_and_blob(trained):  # noqa: F811
    """One memo across presets that share most settings: each state, report and sealed .pgrp is the one computed
    from scratch (tensors bitwise, the blob byte for byte), while GPTQ and lrzip ran fewer times."""
    model, hessians = trained
    state = model.unbanked_state_dict()
    memo, groups, calls = capfit.Memo(), capfit.Memo(capfit.group_key), []
    for values in MEMO_PRESETS:
        fresh, fresh_report = quantize_state(state, hessians, values)
        cached, cached_report = quantize_state(state, hessians, values, memo=memo)
        assert fresh["meta"] == cached["meta"] and fresh["tensors"].keys() == cached["tensors"].keys()
        for name, t in fresh["tensors"].items():
            assert torch.equal(t, cached["tensors"][name]), name
        drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
        assert drop(fresh_report) == drop(cached_report)
        assert pack(cached, groups) == pack(fresh)
        calls.append(fresh_report["lqer_picks"])
    assert len(calls[4]) > len(calls[5]) >= 1  # the budgets pick different ranks: adaptive saw every error
    matrices = sum(1 for name in state if capfit.MATRIX.match(name))
    assert memo.count() - memo.count("awq") - memo.count("lqer") < matrices * len(MEMO_PRESETS) / 2
    assert groups.count() < 7 * len(MEMO_PRESETS)
