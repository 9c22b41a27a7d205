"""The training stage: loss falls on real text, resume equality, world size 1 vs 2 (gloo under torchrun), outputs,
the time schedule, bad input, and TrainConfig defaults against config.yaml."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pgolf import checkpoint
from pgolf.errors import PgolfError
from pgolf.model import ModelConfig
from pgolf.optim import lr_multiplier
from pgolf.seq_schedule import seq_change_ramp, seq_len_at
from pgolf.shards import write_shard
from pgolf.train import TrainConfig, Trainer, main, pack, schedule_frac, seq_lens
from pgolf.window_loader import WindowLoader

from conftest import live_tree

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 258  # bytes + 2: BOS is 1

MODEL = {
    "vocab_size": VOCAB,
    "num_layers": 3,
    "model_dim": 32,
    "num_heads": 2,
    "num_kv_heads": 1,
    "mlp_mult": 2.0,
    "rope_dims": 8,
    "xsa_last_n": 3,
    "num_loops": 1,
    "loop_start": 1,
    "loop_end": 1,
    "parallel_start_layer": 2,
    "train_seq_len": 32,
    "enable_looping_at": 0.5,
}
STEPS = 10
TRAIN = {
    "schedule": "steps",
    "steps": STEPS,
    "batch_tokens": 8 * 2 * 32,
    "log_every": 1,
    "checkpoint_minutes": 0,  # the record's: no checkpoints
    "ema_decay": 0.5,
    "matrix_lr": 0.05,
    "embed_lr": 0.05,
    "scalar_lr": 0.05,
}


STOP_ONLY = 1e6  # checkpoints on, none due within a test: a checkpoint only where a stop saves one


def byte_documents(first=0, last=40):
    """Real English text: Python's own documentation topics, one document each, as byte tokens after a BOS."""
    from pydoc_data.topics import topics

    tokens = []
    for key in sorted(topics)[first:last]:
        tokens.append(1)
        tokens.extend(b + 2 for b in topics[key].encode())
    return np.array(tokens)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    tokens = byte_documents()
    parts = np.array_split(tokens, 3)
    entries = [write_shard(root / f"fineweb_train_{i:06d}.bin", p) for i, p in enumerate(parts)]
    val = byte_documents(40, 44)
    val_entries = [
        write_shard(root / "fineweb_val_000000.bin", val),
        write_shard(root / "fineweb_val_bytes_000000.bin", (val != 1).astype(np.int32)),
    ]
    for e in entries + val_entries:
        e["path"] = Path(e["path"]).name
    manifest = {
        "dataset": "bytes",
        "source": "local",
        "tokenizer": {"path": "none", "sha256": ""},
        "vocab_size": VOCAB,
        "shards": {"train": entries, "val": val_entries[:1], "val_bytes": val_entries[1:]},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "data_audit.json").write_text(json.dumps({"passed": True}))
    return root


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # in-process runs; 2 busy cores make oversubscribed OpenMP crawl
    yield
    torch.set_num_threads(threads)


WINDOW = {"seq_len": 64, "batch_tokens": 512, "sliding_stride": None, "truncate_tail": True, "val_docs_limit": 3}


def config(tmp_path, eval_window=None, model=None, **train):
    path = tmp_path / "config.json"
    sections = {
        "model": {**MODEL, **(model or {})},
        "train": {**TRAIN, **train},
        "hardware": {"gpus": 0},
        "run": {"name": "t", "seeds": [3]},
    }
    if eval_window:
        sections["eval"] = eval_window
    path.write_text(json.dumps(sections))
    return path


def args(cfg, data, out, *extra):
    return [
        "--config",
        str(cfg),
        "--manifest",
        str(data / "manifest.json"),
        "--audit",
        str(data / "data_audit.json"),
        "--seed",
        "3",
        "--out-dir",
        str(out),
        *extra,
    ]


def records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    torch.set_num_threads(1)
    main(args(config(tmp), data, tmp / "out"))
    return tmp / "out"


def test_outputs_and_loss_falls_on_real_text(uninterrupted):
    out = uninterrupted
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl", "model.pt", "summary.json"]
    log = records(out)
    assert log[0]["event"] == "start" and log[0]["config"]["train"]["steps"] == STEPS
    assert "sources_sha256" in log[0]["code_version"]
    steps = [r for r in log if r["event"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert {"loss", "lr_mult", "ms_per_step", "tokens_per_s", "peak_mem_mib"} <= set(steps[0])
    assert steps[0]["loss"] > 4.5  # ~ln(258) at initialization
    assert steps[-1]["loss"] < steps[0]["loss"] - 1.5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["tokens"] == STEPS * TRAIN["batch_tokens"]
    assert summary["world_size"] == 1 and summary["accum_steps"] == 8
    assert summary["looping_from_step"] == STEPS // 2
    assert summary["ms_per_step_before_looping"] > 0 and summary["ms_per_step_after_looping"] > 0
    saved = torch.load(out / "model.pt")
    assert saved["config"] == dataclasses.asdict(ModelConfig(**MODEL))
    assert saved["train"] == summary
    assert "tok_emb.weight" in saved["state_dict"] and "blocks.0.attn.c_q.weight" in saved["state_dict"]
    assert all(t.dtype == torch.float32 for t in saved["state_dict"].values())


def test_resumed_run_ends_with_the_same_weights(uninterrupted, data, tmp_path):
    out = tmp_path / "out"  # the run without checkpoints against one stopped and resumed
    main(args(config(tmp_path, checkpoint_minutes=STOP_ONLY), data, out, "--stop-after-step", "4"))
    assert checkpoint.checkpoint_path(out).exists() and not (out / "model.pt").exists()
    main(args(config(tmp_path, checkpoint_minutes=STOP_ONLY), data, out))
    assert not checkpoint.checkpoint_path(out).exists()
    full, resumed = torch.load(uninterrupted / "model.pt"), torch.load(out / "model.pt")
    assert full["state_dict"].keys() == resumed["state_dict"].keys()
    for name, t in full["state_dict"].items():
        assert torch.equal(t, resumed["state_dict"][name]), name
    log = records(out)
    assert [r["step"] for r in log if r["event"] == "step"] == list(range(1, STEPS + 1))
    assert any(r["event"] == "resume" and r["step"] == 4 for r in log)


LAUNCH_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def launch_command(ranks, cfg, data, out, *extra) -> list[str]:
    """The training stage as the rules start it: pgolf.launch, torchrun with `ranks` gloo ranks."""
    return [sys.executable, "-m", "pgolf.launch", "--gpus", "0", "--cpu-procs", str(ranks), "--", "-m", "pgolf.train",
            *args(cfg, data, out, *extra)]  # fmt: skip


def launch(ranks, cfg, data, out, *extra):
    """launch_command in its own session, apart from the test's."""
    return subprocess.Popen(
        launch_command(ranks, cfg, data, out, *extra), env=LAUNCH_ENV, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def finish(proc):
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-4000:]


# Two ranks against one process: the global clip scope (each rank's local clip, #1855's, sees another gradient than
# one process does) and an fp32 embedding (bf16 storage rounds each update, so the ranks' other summation order
# shows in the 4th decimal).
EXACT = {"model": {"embed_bf16": False}, "grad_clip_scope": "global"}


@pytest.fixture(scope="module")
def two_ranks(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two")
    finish(launch(2, config(tmp, **EXACT), data, tmp / "out"))
    return tmp / "out"


def test_two_gloo_ranks_match_one_process(data, two_ranks, tmp_path):
    main(args(config(tmp_path, **EXACT), data, tmp_path / "one"))
    one, two = torch.load(tmp_path / "one" / "model.pt"), torch.load(two_ranks / "model.pt")
    assert two["train"]["world_size"] == 2 and two["train"]["accum_steps"] == 4
    assert two["train"]["tokens"] == one["train"]["tokens"]
    assert two["train"]["final_loss"] == pytest.approx(one["train"]["final_loss"], abs=1e-4)
    for name, t in one["state_dict"].items():
        assert torch.allclose(t, two["state_dict"][name], atol=1e-4, rtol=1e-4), name


def test_raw_weights_are_scored_after_the_last_step(data, tmp_path):
    """With ema_decay 0 the EMA is the raw weights, so the logged raw val equals a diagnostic eval of model.pt."""
    from pgolf.bpb import diagnostic_eval, load_val
    from pgolf.dist import Dist
    from pgolf.model import load_trained

    out = tmp_path / "out"
    main(args(config(tmp_path, WINDOW, ema_decay=0.0), data, out))
    raw = [r for r in records(out) if r["event"] == "raw_val"]
    assert len(raw) == 1 and raw[0]["step"] == STEPS
    val = load_val(data / "manifest.json", WINDOW["val_docs_limit"], WINDOW["seq_len"])
    assert raw[0]["scored"] == val.targets == (val_len := val.tokens.size - 1) and val_len % WINDOW["seq_len"] == 0
    model = load_trained(out / "model.pt")[0].eval()
    model.looping = True  # on since half the steps
    cpu = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    expected = diagnostic_eval(model, val, WINDOW["seq_len"], 8, cpu)
    assert raw[0]["val_bpb"] == pytest.approx(expected["val_bpb"], rel=1e-5)
    assert {"event": "raw_val", **json.loads((out / "summary.json").read_text())["raw_val"]} == raw[0]


def test_the_clock_counts_checkpoint_saves(data, tmp_path, monkeypatch):
    """Wall clock from the first step to the last: a slow save every step shows in train_seconds."""
    save = checkpoint.Checkpoints.save

    def slow_save(self):
        time.sleep(0.2)
        save(self)

    monkeypatch.setattr(checkpoint.Checkpoints, "save", slow_save)
    out = tmp_path / "out"
    main(args(config(tmp_path, checkpoint_minutes=1e-9), data, out))
    summary = json.loads((out / "summary.json").read_text())
    step_seconds = sum(r["ms_per_step"] for r in records(out) if r["event"] == "step") / 1000
    assert summary["train_seconds"] >= step_seconds + 0.2 * (STEPS - 1)


def test_time_schedule_stops_at_the_budget_less_the_reserve(data, tmp_path):
    out = tmp_path / "out"
    # the step cap stays far away, so only the time budget can end the loop
    main(
        args(
            config(
                tmp_path, schedule="time", steps=10**6, budget_seconds=2.0, hessian_reserve_seconds=0.5, log_every=10**6
            ),
            data,
            out,
        )
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_seconds"] >= 1.5 and summary["steps"] < 10**6
    assert len([r for r in records(out) if r["event"] == "step"]) == 1  # only the last step is logged


def test_schedule_fractions_and_sequence_lengths():
    steps = TrainConfig(schedule="steps", steps=200)
    assert schedule_frac(steps, 50, 999.0) == 0.25
    timed = TrainConfig(budget_seconds=600, hessian_reserve_seconds=0.5)
    assert schedule_frac(timed, 7, 299.75) == pytest.approx(0.5)
    assert schedule_frac(timed, 7, 700.0) == 1.0
    progressive = ModelConfig(seq_schedule=[[1024, 0.1], [2048, 0.7], [3072, 1.0]])
    assert [seq_len_at(progressive.seq_schedule, f) for f in (0.0, 0.099, 0.1, 0.69, 0.7, 1.0)] == [
        1024,
        1024,
        2048,
        2048,
        3072,
        3072,
    ]
    assert seq_lens(progressive) == [1024, 2048, 3072] and seq_lens(ModelConfig()) == [2048]


def test_packings_cut_as_documented_and_stream_trains(data, tmp_path):
    tokens = torch.full((12,), 7)
    tokens[[0, 7]] = 1  # documents of 7 and 5 tokens; rows of 4
    ids, cuts = pack(tokens, 4, "rows")
    assert ids.shape == (3, 4) and cuts.tolist() == [0, 4, 7, 8, 12]
    ids, cuts = pack(tokens, 4, "stream")
    assert ids.shape == (1, 12) and cuts.tolist() == [0, 4, 7, 11, 12]  # 7 -> 4 + 3, 5 -> 4 + 1
    with pytest.raises(PgolfError, match="train.packing: 'flat' is not one of"):
        TrainConfig(packing="flat")

    out = tmp_path / "out"
    main(args(config(tmp_path, packing="stream"), data, out))
    steps = [r for r in records(out) if r["event"] == "step"]
    assert len(steps) == STEPS and steps[0]["loss"] > 4.5
    assert steps[-1]["loss"] < steps[0]["loss"] - 1.5


def test_shuffled_loader_feeds_its_windows_trains_and_resumes_bitwise(data, tmp_path, monkeypatch):
    seen = []
    real = Trainer.micro_batches

    def spy(self, rows, seq_len):
        batches = list(real(self, rows, seq_len))  # micro_batches yields them one at a time
        seen.append((rows, batches))
        return batches

    monkeypatch.setattr(Trainer, "micro_batches", spy)
    cfg = config(tmp_path, loader="shuffled", checkpoint_minutes=STOP_ONLY)
    full, out = tmp_path / "full", tmp_path / "out"
    main(args(cfg, data, full))
    paths = sorted(data.glob("fineweb_train_*.bin"))
    first = WindowLoader(paths, TRAIN["batch_tokens"], MODEL["train_seq_len"])
    assert torch.equal(seen[0][0], next(first))  # the trainer's first batch is the loader's first
    first.close()
    rows, batches = seen[0]
    assert rows.shape == (8, 2, 33) and len(batches) == 8
    for k, (ids, targets, _) in enumerate(batches):  # each window a row, with its own last target
        assert torch.equal(ids, rows[k, :, :-1]) and torch.equal(targets, rows[k, :, 1:])
    steps = [r for r in records(full) if r["event"] == "step"]
    assert len(steps) == STEPS and steps[-1]["loss"] < steps[0]["loss"] - 1.5
    monkeypatch.setattr(Trainer, "micro_batches", real)
    main(args(cfg, data, out, "--stop-after-step", "4"))
    main(args(cfg, data, out))  # the resumed loader replays its draws to step 4
    assert_bitwise(full, out)
    with pytest.raises(PgolfError, match="train.loader: 'random' is not one of"):
        TrainConfig(loader="random")
    with pytest.raises(PgolfError, match="drop model.seq_schedule"):
        main(args(config(tmp_path, loader="shuffled", model={"seq_schedule": [[32, 1.0]]}), data, out))


def test_lr_ramps_after_a_sequence_length_change(data, tmp_path):
    assert [seq_change_ramp(s, 5, 4) for s in (5, 6, 7, 8, 9)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert seq_change_ramp(3, None, 4) == 1.0 and seq_change_ramp(6, 5, 0) == 1.0
    cfg = tmp_path / "config.json"
    model = {**MODEL, "seq_schedule": [[16, 0.5], [32, 1.0]]}
    cfg.write_text(
        json.dumps(
            {
                "model": model,
                "train": {**TRAIN, "seq_change_warmup_steps": 4},
                "hardware": {"gpus": 0},
                "run": {"name": "t", "seeds": [3]},
            }
        )
    )
    out = tmp_path / "out"
    main(args(cfg, data, out))
    log = records(out)
    assert [(r["step"], r["seq_len"]) for r in log if r["event"] == "seq_len_changed"] == [(5, 32)]
    steps = [r for r in log if r["event"] == "step"]
    assert [r["seq_len"] for r in steps] == [16] * 5 + [32] * 5
    warmdown = TrainConfig.warmdown_frac, TrainConfig.min_lr
    # the step record of internal step k (logged as k + 1) carries the multiplier its update used
    expected = [
        lr_multiplier(k / STEPS, *warmdown) * (min((k - 5 + 1) / 4, 1.0) if k >= 5 else 1.0) for k in range(STEPS)
    ]
    assert [r["lr_mult"] for r in steps] == pytest.approx(expected, abs=1e-5)
    assert steps[5]["lr_mult"] == pytest.approx(lr_multiplier(0.5, *warmdown) / 4, abs=1e-5)


def sigkill_after_a_checkpoint(ranks, cfg, data, out):
    """Start training, SIGKILL its whole process tree (launcher, torchrun agent, ranks) from outside as soon as a
    checkpoint exists; return the step that checkpoint holds."""
    proc = launch(ranks, cfg, data, out)
    path = checkpoint.checkpoint_path(out)
    deadline = time.monotonic() + 240
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    # every process at once, ranks first: a crash, not the clean stop a killed launcher alone now leads to
    tree = live_tree(proc.pid)
    for pid in reversed(tree):
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while [p for p in tree if live_tree(p)]:
        assert time.monotonic() < deadline, "the ranks outlived the kill"
        time.sleep(0.05)
    assert not (out / "model.pt").exists(), "the run finished before the kill: use more steps"
    return torch.load(path, weights_only=True)["step"]


def assert_bitwise(want, got):
    a, b = torch.load(want / "model.pt")["state_dict"], torch.load(got / "model.pt")["state_dict"]
    assert a.keys() == b.keys()
    for name, t in a.items():
        assert torch.equal(t, b[name]), name


def test_sigkill_then_resume_is_bitwise_one_rank(uninterrupted, data, tmp_path):
    cfg, out = config(tmp_path, checkpoint_minutes=1e-9), tmp_path / "out"  # a checkpoint after every step
    step = sigkill_after_a_checkpoint(1, cfg, data, out)
    assert 0 < step < STEPS
    finish(launch(1, cfg, data, out))
    assert_bitwise(uninterrupted, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumes"][0] == {"step": step, "from_world_size": 1, "world_size": 1}
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl", "model.pt", "summary.json"]  # no temporaries


def test_sigkill_then_resume_is_bitwise_two_ranks_and_allowed_on_one(two_ranks, data, tmp_path):
    cfg, out = config(tmp_path, checkpoint_minutes=1e-9, **EXACT), tmp_path / "out"
    step = sigkill_after_a_checkpoint(2, cfg, data, out)
    assert 0 < step < STEPS
    shutil.copytree(out, tmp_path / "other")
    finish(launch(2, cfg, data, out))
    assert_bitwise(two_ranks, out)
    # the same checkpoint resumed on one rank: allowed, logged, recorded
    main(args(cfg, data, tmp_path / "other"))
    summary = json.loads((tmp_path / "other" / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == STEPS
    assert summary["resumes"][0] == {"step": step, "from_world_size": 2, "world_size": 1}
    resume = next(r for r in records(tmp_path / "other") if r["event"] == "resume")
    assert (resume["from_world_size"], resume["world_size"]) == (2, 1)


def test_one_trainer_per_out_dir_and_a_killed_one_leaves_nothing_in_the_way(data, tmp_path):
    out = tmp_path / "out"
    cfg = config(tmp_path, steps=10**6, checkpoint_minutes=STOP_ONLY)
    cmd = [sys.executable, "-m", "pgolf.train", *args(cfg, data, out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    first = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = out / ".train.lock"
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(PgolfError, match=rf"{out}: another trainer \(pid {first.pid}\) is running in this folder"):
            main(args(cfg, data, out, "--stop-after-step", "1"))
    finally:
        first.kill()
        first.wait()
    # what a writer killed mid-rename leaves: the next trainer sweeps its own kinds, nothing else
    for name in (".checkpoint.pt.k1d2.tmp", ".model.pt.x9.tmp", ".hessians.pt.h7.tmp"):
        (out / name).write_bytes(b"partial")
    main(args(cfg, data, out, "--stop-after-step", "1"))
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".tmp") == [".hessians.pt.h7.tmp"]
    assert checkpoint.checkpoint_path(out).exists() and not (out / ".train.lock").exists()


def test_resume_refuses_another_data_manifest(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = tmp_path / "out"
    main(args(config(tmp_path, checkpoint_minutes=STOP_ONLY), copy, out, "--stop-after-step", "1"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"]["train"] = manifest["shards"]["train"][:2]  # other data, same model and train config
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PgolfError, match="checkpoint of a different model/train config, seed or data manifest"):
        main(args(config(tmp_path, checkpoint_minutes=STOP_ONLY), copy, out))


def test_refuses_failed_audit_bad_batch_and_foreign_checkpoint(data, tmp_path):
    bad_audit = tmp_path / "audit.json"
    bad_audit.write_text(json.dumps({"passed": False, "problems": ["3 val documents also in train"]}))
    cfg = config(tmp_path)
    argv = args(cfg, data, tmp_path / "out")
    with pytest.raises(PgolfError, match=r"audit failed \(3 val documents also in train\)"):
        main([*argv[:4], "--audit", str(bad_audit), *argv[6:]])
    with pytest.raises(PgolfError, match="batch_tokens"):
        main(args(config(tmp_path, batch_tokens=8 * 40), data, tmp_path / "out"))
    with pytest.raises(PgolfError, match="train.schedule"):
        main(args(config(tmp_path, schedule="wallclock"), data, tmp_path / "out"))
    out = tmp_path / "out"
    main(args(config(tmp_path, checkpoint_minutes=STOP_ONLY), data, out, "--stop-after-step", "1"))
    with pytest.raises(PgolfError, match="checkpoint of a different"):
        main(args(config(tmp_path, matrix_lr=0.01, checkpoint_minutes=STOP_ONLY), data, out))


def test_a_diverged_run_stops_at_its_first_logged_nan_and_writes_no_model(data, tmp_path, monkeypatch):
    real_step = Trainer.train_step

    def poisoned_from_step_3(self, *step_args):
        loss, grad_norm = real_step(self, *step_args)
        return (loss * float("nan") if self.step >= 2 else loss), grad_norm

    monkeypatch.setattr(Trainer, "train_step", poisoned_from_step_3)
    out = tmp_path / "out"
    with pytest.raises(
        PgolfError, match=r"train: the loss is nan at step 3 \(.*log\.jsonl\.partial\); the run diverged"
    ):
        main(args(config(tmp_path), data, out))
    assert not (out / "model.pt").exists() and not (out / "log.jsonl").exists()
    logged = [json.loads(line) for line in (out / "log.jsonl.partial").read_text().splitlines()]
    assert [r["step"] for r in logged if r["event"] == "step"] == [1, 2, 3]


def test_train_config_defaults_equal_config_yaml():
    section = yaml.safe_load((ROOT / "config.yaml").read_text())["train"]
    assert section == dataclasses.asdict(TrainConfig())


@pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU backend needs a C++ compiler")
def test_compile_cache_holds_inductor_and_autograd_caches(tmp_path):
    """--compile-cache: what torch.compile writes (FX graphs, AOTAutograd entries) lands in the given folder."""
    script = (
        "import pathlib, sys, torch\nfrom pgolf import compile_cache\n"
        "compile_cache.use(pathlib.Path(sys.argv[1]))\n"
        "x = torch.randn(8, requires_grad=True)\n"
        "torch.compile(lambda t: (2 * t).sin().sum())(x).backward()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache")], check=True, env=env, cwd=ROOT)
    written = {p.relative_to(tmp_path / "cache").parts[0] for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert {"fxgraph", "aotautograd"} <= written


def test_model_attention_picks_the_training_kernel(data, tmp_path):
    """model.attention reaches the trainer: a kernel this machine lacks stops the stage with the backend's message
    before any step, where "auto" would have trained on sdpa."""
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "model": {**MODEL, "attention": "cudnn"},
                "train": TRAIN,
                "hardware": {"gpus": 0},
                "run": {"name": "t", "seeds": [3]},
            }
        )
    )
    with pytest.raises(PgolfError, match="attention backend 'cudnn' is not usable on cpu"):
        main(args(path, data, tmp_path / "out"))
    assert not (tmp_path / "out" / "model.pt").exists()


def interrupt_at_step(launch: list, out: Path, step: int):
    """Launch training, wait until its log holds `step`, send SIGINT: (exit code, stdout, stderr, seconds the run
    took to stop after the signal)."""
    proc = subprocess.Popen(launch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=LAUNCH_ENV, cwd=ROOT)
    partial = out / "log.jsonl.partial"
    deadline = time.time() + 240
    while time.time() < deadline and not (partial.exists() and f'"step": {step},' in partial.read_text()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stdout, stderr, time.time() - sent


@pytest.mark.parametrize("ranks", [1, 2])
def test_sigint_to_the_launcher_stops_every_rank_with_a_checkpoint(data, tmp_path, ranks):
    """Ctrl-C (SIGINT to pgolf.launch) stops training at the end of a step on every gloo rank within seconds: a
    checkpoint of that step, no model.pt, one message naming the step, no traceback; a rerun resumes there."""
    import re

    out = tmp_path / "out"
    launch = launch_command(ranks, config(tmp_path, steps=100000, checkpoint_minutes=STOP_ONLY), data, out)
    code, stdout, stderr, seconds = interrupt_at_step(launch, out, 3)
    assert seconds < 15, "training kept running after the signal"
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr + stdout and "KeyboardInterrupt" not in stderr and "SignalException" not in stderr
    said = re.findall(r"^train: interrupted; the next run resumes from step (\d+)$", stderr, re.M)
    assert len(said) == 1, stderr[-3000:]  # rank 0 alone says it
    step = int(said[0])
    assert not (out / "model.pt").exists() and not (out / "summary.json").exists()
    assert torch.load(checkpoint.checkpoint_path(out), weights_only=False)["step"] == step >= 3
    rerun = subprocess.run(
        [*launch, "--stop-after-step", str(step + 1)],
        capture_output=True,
        text=True,
        env=LAUNCH_ENV,
        cwd=ROOT,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = [json.loads(line) for line in (out / "log.jsonl.partial").read_text().splitlines()]
    assert any(r["event"] == "resume" and r["step"] == step for r in resumed)


def test_without_checkpoints_a_signal_stops_training_and_saves_nothing(data, tmp_path):
    """train.checkpoint_minutes 0 (the record's): SIGINT still stops training at the end of a step, but writes no
    checkpoint (and no model.pt), and says the next run starts over."""
    import re

    out = tmp_path / "out"
    code, stdout, stderr, _ = interrupt_at_step(launch_command(1, config(tmp_path, steps=100000), data, out), out, 2)
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr + stdout
    said = re.findall(r"^train: interrupted; the next run (.*)$", stderr, re.M)
    assert said == ["starts from the first step (no checkpoint)"], stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl.partial"]  # no checkpoint, not even a temporary
    last = json.loads((out / "log.jsonl.partial").read_text().splitlines()[-1])
    assert last["event"] == "stopped" and last["reason"] == "interrupted" and last["step"] >= 2


def test_without_checkpoints_nothing_is_resumed_and_stop_after_step_is_refused(data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(PgolfError, match="--stop-after-step: train.checkpoint_minutes is 0"):
        main(args(config(tmp_path), data, out, "--stop-after-step", "2"))
    assert not out.exists()
    main(args(config(tmp_path, checkpoint_minutes=STOP_ONLY), data, out, "--stop-after-step", "2"))
    saved = checkpoint.checkpoint_path(out).read_bytes()
    main(args(config(tmp_path), data, out))  # checkpoints off: the one there is neither resumed nor touched
    log = records(out)
    assert [r["step"] for r in log if r["event"] == "step"] == list(range(1, STEPS + 1))
    assert not any(r["event"] == "resume" for r in log)
    assert json.loads((out / "summary.json").read_text())["resumes"] == []
    assert checkpoint.checkpoint_path(out).read_bytes() == saved


def test_a_killed_launcher_takes_every_rank_with_it(data, tmp_path):
    """SIGKILL to pgolf.launch alone, which can pass nothing on: torchrun (its own session, for Ctrl-C) still gets
    SIGTERM from the kernel and stops its ranks; within seconds no process of the run is left."""
    out = tmp_path / "out"
    cmd = launch_command(2, config(tmp_path, steps=100000), data, out)
    proc = subprocess.Popen(cmd, env=LAUNCH_ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / "log.jsonl.partial"
    deadline = time.monotonic() + 240
    while not (partial.exists() and '"step": 1,' in partial.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "training never logged step 1"
        time.sleep(0.1)
    tree = live_tree(proc.pid)
    assert len(tree) >= 4, tree  # the launcher, torchrun, two ranks
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while left := [p for p in tree if live_tree(p)]:
        assert time.monotonic() < deadline, f"{left} outlived the launcher"
        time.sleep(0.1)
    assert not (out / "model.pt").exists()
