"""Hessian collection: calibration windows, the capture sums, and the all-reduce over torchrun ranks."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pgolf.errors import PgolfError
from pgolf.hessians import CalibrationWindows, HessianConfig, HessianSums, rank_files, rank_rng
from pgolf.model import GPT, ModelConfig, load_trained
from pgolf.shards import write_shard

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(
    vocab_size=96,
    num_layers=3,
    model_dim=32,
    num_heads=2,
    num_kv_heads=1,
    mlp_mult=2.0,
    rope_dims=8,
    xsa_last_n=3,
    num_loops=1,
    loop_start=1,
    loop_end=1,
    parallel_start_layer=2,
    train_seq_len=32,
)


def tiny_model_pt(path: Path, seed=0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a "trained" model: no zero matrices, gates open
    torch.save(
        {"config": dataclasses.asdict(model.config), "state_dict": model.unbanked_state_dict(), "train": {}}, path
    )
    return model


def tiny_data(folder: Path, shards=3, tokens=3000, vocab=96) -> Path:
    rng = np.random.default_rng(0)
    entries = []
    for i in range(shards):
        ids = rng.integers(2, vocab, size=tokens - 37 * i)
        ids[:: 41 + i] = 1  # documents start at BOS
        entry = write_shard(folder / f"fineweb_train_{i:06d}.bin", ids)
        entries.append({**entry, "path": Path(entry["path"]).name})
    manifest = {
        "dataset": "tiny",
        "tokenizer": {"path": "none", "sha256": ""},
        "vocab_size": vocab,
        "shards": {"train": entries},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"


def test_windows_are_random_shard_slices_without_repeats_in_an_epoch(tmp_path):
    # token = 10000·shard + position, so a window tells where it came from
    paths = [Path(write_shard(tmp_path / f"s{i}.bin", 10000 * i + np.arange(900 + 100 * i))["path"]) for i in range(3)]
    windows = CalibrationWindows(paths, 64, rank_rng(7, 0))
    per_epoch = sum(len(s) for s in windows.starts)
    assert per_epoch >= 900 // 64 + 1000 // 64 + 1100 // 64 - 3
    seen = set()
    for _ in range(per_epoch):
        w = windows.window().astype(np.int64)
        shard, start = divmod(int(w[0]), 10000)
        assert np.array_equal(w, w[0] + np.arange(64)), "a contiguous slice of one shard"
        assert (shard, start) not in seen
        seen.add((shard, start))
    for i in range(3):  # one random phase per shard, then whole windows
        assert len({start % 64 for shard, start in seen if shard == i}) == 1
    assert len({shard for shard, _ in seen}) == 3
    assert windows.batch(3).shape == (3, 64)  # the next epoch starts by itself
    first = CalibrationWindows(paths, 64, rank_rng(7, 0)).batch(4)
    assert torch.equal(first, CalibrationWindows(paths, 64, rank_rng(7, 0)).batch(4))
    assert not torch.equal(first, CalibrationWindows(paths, 64, rank_rng(7, 1)).batch(4))


def test_rank_files_follow_the_record_split():
    files = [f"f{i}" for i in range(5)]
    assert rank_files(files, 0, 2) == ["f0", "f2", "f4"] and rank_files(files, 1, 2) == ["f1", "f3"]
    assert rank_files(files[:1], 1, 2) == ["f0"]  # fewer files than ranks: every rank reads them all


def test_too_short_shards_are_a_clear_error(tmp_path):
    tiny_data(tmp_path, shards=1, tokens=50)
    with pytest.raises(PgolfError, match="hessians.seq_len"):
        CalibrationWindows(sorted(tmp_path.glob("*.bin")), 64, rank_rng(0, 0))


def test_sums_cover_every_application_and_match_a_direct_computation(tmp_path):
    model = tiny_model_pt(tmp_path / "model.pt")
    model.eval()
    model.looping = True
    rows = {}

    def record(name, x):
        rows.setdefault(name, []).append(x.clone())

    sums = HessianSums()
    ids = torch.randint(2, 96, (2, 16))
    ids[:, 0] = 1
    with torch.no_grad():
        model(ids, capture=lambda n, x: (record(n, x), sums(n, x)))
    applications = {n: len(v) for n, v in rows.items()}
    assert applications["blocks.1.mlp.fc.weight"] == 2  # layer 1 loops once more
    assert applications["blocks.0.attn.c_q.weight"] == 1 and applications["tok_emb.weight"] == 1
    assert len(rows) == 6 * 3 + 1
    result = sums.result(total_batches=4)
    for name, xs in rows.items():
        X = torch.cat(xs).double()
        torch.testing.assert_close(result[name].double(), X.T @ X / 4, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result["act_rms"][name].double(), X.pow(2).mean(0).sqrt(), rtol=1e-5, atol=1e-6)
    assert result["tok_emb.weight"].shape == (32, 32) and result["blocks.0.mlp.proj.weight"].shape == (64, 64)


def test_two_gloo_ranks_equal_one_process_over_the_union_of_batches(tmp_path):
    tiny_model_pt(tmp_path / "model.pt")
    manifest = tiny_data(tmp_path)
    calib = HessianConfig(calibration_batches=2, batch_seqs=2, seq_len=32)
    config = {"hessians": dataclasses.asdict(calib), "hardware": {"gpus": 0, "cpu_procs": 2}}
    out = tmp_path / "train" / "hessians.pt"
    cmd = [
        sys.executable,
        "-m",
        "pgolf.launch",
        "--gpus",
        "0",
        "--cpu-procs",
        "2",
        "--",
        "-m",
        "pgolf.hessians",
        "--config",
        json.dumps(config),
        "--model",
        str(tmp_path / "model.pt"),
        "--manifest",
        str(manifest),
        "--seed",
        "3",
        "--out",
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["batches"] == 4 and summary["world"] == 2 and summary["tokens"] == 4 * 2 * 32
    assert summary["seconds"] > 0

    model, _ = load_trained(tmp_path / "model.pt", "cpu")
    model.eval()
    model.looping = True
    paths = sorted(tmp_path.glob("fineweb_train_*.bin"))
    reference = HessianSums()
    with torch.no_grad():
        for rank in range(2):
            windows = CalibrationWindows(rank_files(paths, rank, 2), calib.seq_len, rank_rng(3, rank))
            for _ in range(calib.calibration_batches):
                model(windows.batch(calib.batch_seqs), capture=reference)
    expected = reference.result(total_batches=4)
    assert set(got) == set(expected) and len(got["act_rms"]) == 19
    for name in expected["act_rms"]:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["act_rms"][name], expected["act_rms"][name], rtol=1e-4, atol=1e-6)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(PgolfError, match="run the train stage"):
        load_trained(tmp_path / "model.pt", "cpu")
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PgolfError, match="re-run the train stage"):
        load_trained(tmp_path / "model.pt", "cpu")


def test_config_yaml_mirrors_the_dataclass_defaults():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert config["hessians"] == dataclasses.asdict(HessianConfig())
