"""The eval_prequant and evaluate stages end to end on a tiny model and corpus, config and bad input."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pgolf import pack
from pgolf.errors import PgolfError
from pgolf.evaluate import EvalConfig, main
from pgolf.model import GPT, ModelConfig, config_dict
from pgolf.quant import quantize_state
from pgolf.shards import shard_name, write_shard

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
EVAL = {
    "seq_len": 32,
    "batch_tokens": 128,
    "ttt": {
        "seq_len": 32,
        "chunk_size": 8,
        "batch_size": 4,
        "lora_rank": 2,
        "lora_alpha": 4.0,
        "phases": 1,
        "prefix_docs": 6,
        "global_chunk_tokens": 96,
        "global_batch_seqs": 2,
        "window_multiple": 16,
    },
    "tilt": {"enabled": True, "order": 3, "threshold": 0.5},
}


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory):
    """manifest + val shard with sidecar, model.pt, and a packed artifact (model.pgrp, pack.json, size.json)."""
    folder = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    motif = rng.integers(2, 64, size=6)  # repeated text, so the n-gram hints fire
    docs = [np.concatenate([[1], motif, rng.integers(2, 64, size=int(rng.integers(1, 40))), motif]) for _ in range(12)]
    tokens = np.concatenate(docs)
    sidecar = np.where(tokens == 1, 0, rng.integers(1, 4, size=tokens.size))
    val = write_shard(folder / shard_name("val", 0), tokens)
    val_bytes = write_shard(folder / shard_name("val_bytes", 0), sidecar)
    for entry in (val, val_bytes):
        entry["path"] = Path(entry["path"]).name
    manifest = {
        "dataset": "t",
        "tokenizer": {"path": "tok.model", "sha256": ""},
        "vocab_size": 64,
        "shards": {"val": [val], "val_bytes": [val_bytes]},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))

    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=64,
        num_layers=4,
        model_dim=32,
        num_heads=2,
        num_kv_heads=1,
        rope_dims=8,
        gate_window=4,
        num_loops=1,
        loop_start=1,
        loop_end=2,
        parallel_start_layer=3,
        xsa_last_n=2,
    )
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = model.unbanked_state_dict()
    torch.save({"config": config_dict(config), "state_dict": state, "train": {}}, folder / "model.pt")
    hessians = {n: torch.eye(t.shape[1]) for n, t in state.items() if t.dim() == 2 and n.endswith("weight")}
    quantized, _ = quantize_state(state, hessians, {}, model_config=config_dict(config))
    blob = pack.pack(quantized)
    (folder / "model.pgrp").write_bytes(blob)
    (folder / "pack.json").write_text(json.dumps({"sha256": pack.sha256(blob)}))
    (folder / "size.json").write_text(json.dumps({"total_bytes": len(blob) + 1000}))
    return folder, tokens, sidecar


def run_stage(folder, command, eval_section=EVAL, out="out.json", **paths):
    config = json.dumps({"eval": eval_section, "hardware": {"gpus": 0}})
    args = [command, "--config", config, "--manifest", str(folder / "manifest.json"), "--out", str(folder / out)]
    for key, value in paths.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    main(args)
    return json.loads((folder / out).read_text())


def artifact_paths(folder):
    return dict(
        pgrp=folder / "model.pgrp",
        pack_json=folder / "pack.json",
        size=folder / "size.json",
        prequant=folder / "prequant.json",
    )


def test_prequant_and_artifact_write_the_spec_keys(stage_inputs):
    folder, tokens, sidecar = stage_inputs
    targets = (tokens.size - 1) // EVAL["seq_len"] * EVAL["seq_len"]  # eval.truncate_tail's default (#1855)
    sidecar = sidecar[: targets + 1]
    prequant = run_stage(folder, "prequant", out="prequant.json", model=folder / "model.pt")
    assert prequant["scored"] == prequant["targets"] == targets < tokens.size - 1
    assert prequant["bytes"] == int(sidecar.sum())

    result = run_stage(folder, "artifact", **artifact_paths(folder))
    assert result["prequant"] == {k: prequant[k] for k in ("val_loss", "val_bpb")}
    assert result["targets"] == result["scored"] == targets and result["bytes"] == int(sidecar.sum())
    assert result["final_bpb"] == result["ttt"]["val_bpb"]
    assert result["ttt_no_tilt"]["val_bpb"] != result["ttt"]["val_bpb"]
    assert 0 < result["tilt"]["gated_share"] < 1 and result["tilt"]["enabled"]
    assert result["probes"]["score_first"]["passed"] and result["probes"]["score_first"]["chunks"] >= 1
    assert result["probes"]["tilt_causal"]["identical"]
    assert {"load", "quantized_eval", "hints", "ttt", "global_sgd", "eval_timer"} <= set(result["seconds"])
    full_val_share = result["scored"] / 47_851_520
    assert result["projected_8gpu_seconds"] == pytest.approx(result["seconds"]["eval_timer"] / 8 / full_val_share)
    assert len(result["ttt_phases"]) == 1 and result["artifact_bytes"] > 0
    # the quantized model scores close to the unquantized one (int6/int7 of a tiny random model)
    assert abs(result["quantized"]["val_bpb"] - prequant["val_bpb"]) < 0.05 * prequant["val_bpb"]


def test_truncate_tail_false_scores_every_target_closing_bos_included(stage_inputs):
    folder, tokens, sidecar = stage_inputs
    keep = {**EVAL, "truncate_tail": False, "tilt": {"enabled": False}}
    prequant = run_stage(folder, "prequant", keep, out="keep_pre.json", model=folder / "model.pt")
    result = run_stage(folder, "artifact", keep, out="keep.json", **artifact_paths(folder))
    for out in (prequant, result):
        assert out["scored"] == out["targets"] == tokens.size - 1 and out["bytes"] == int(sidecar.sum())


def test_tilt_off_reports_off_and_no_ttt_scores_the_quantized_model(stage_inputs):
    folder, _, _ = stage_inputs
    off = run_stage(folder, "artifact", {**EVAL, "tilt": {"enabled": False}}, out="off.json", **artifact_paths(folder))
    assert off["probes"]["tilt_causal"] == "off" and "ttt_no_tilt" not in off and not off["tilt"]["enabled"]
    no_ttt = {**EVAL, "ttt": {"enabled": False}, "tilt": {"enabled": False}}
    plain = run_stage(folder, "artifact", no_ttt, out="plain.json", **artifact_paths(folder))
    assert plain["ttt"] is None and plain["final_bpb"] == plain["quantized"]["val_bpb"] == off["quantized"]["val_bpb"]


def test_a_changed_artifact_is_refused(stage_inputs, tmp_path):
    folder, _, _ = stage_inputs
    blob = bytearray((folder / "model.pgrp").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "model.pgrp").write_bytes(bytes(blob))
    paths = {**artifact_paths(folder), "pgrp": tmp_path / "model.pgrp"}
    with pytest.raises(PgolfError, match="differs from"):
        run_stage(folder, "artifact", out="bad.json", **paths)
    assert not (folder / "bad.json").exists()


def test_bad_model_and_config_errors(stage_inputs, tmp_path):
    folder, _, _ = stage_inputs
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PgolfError, match="model.pt"):
        run_stage(folder, "prequant", out="bad.json", model=tmp_path / "model.pt")
    with pytest.raises(PgolfError, match="eval.ttt: unknown key"):
        EvalConfig.parse({"ttt": {"chunk": 48}})
    with pytest.raises(PgolfError, match="enable eval.ttt"):
        EvalConfig.parse({"ttt": {"enabled": False}, "tilt": {"enabled": True}})


def test_config_yaml_mirrors_the_dataclass_defaults():
    section = yaml.safe_load((ROOT / "config.yaml").read_text())["eval"]
    assert dataclasses.asdict(EvalConfig.parse(section)) == dataclasses.asdict(EvalConfig())
    assert dataclasses.asdict(EvalConfig()) == section


def test_sgd_mode_writes_its_ttt_entries(stage_inputs):
    """eval.ttt.mode sgd goes through pgolf.sgd_ttt (imported in its branch) and scores every target once."""
    folder, tokens, _ = stage_inputs
    section = {**EVAL, "ttt": {**EVAL["ttt"], "mode": "sgd"}, "tilt": {"enabled": False}}
    paths = {**artifact_paths(folder), "prequant": folder / "sgd_prequant.json"}
    run_stage(folder, "prequant", out="sgd_prequant.json", model=folder / "model.pt")
    result = run_stage(folder, "artifact", section, out="sgd.json", **paths)
    assert result["scored"] == result["targets"] > 0 and result["ttt_chunks"] >= 1
    assert result["final_bpb"] == result["ttt"]["val_bpb"] and result["probes"]["tilt_causal"] == "off"
    share = result["scored"] / 47_851_520
    assert result["projected_8gpu_seconds"] == pytest.approx(result["seconds"]["eval_timer"] / 8 / share)
