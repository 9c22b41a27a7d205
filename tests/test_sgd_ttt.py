"""Full-weight SGD score-first TTT (#1572): its windows, score-before-update, and totals equal to a plain loop."""

import math

import numpy as np
import pytest
import torch

from pgolf.bpb import ValData
from pgolf.dist import Dist
from pgolf.model import GPT, ModelConfig
from pgolf.sgd_ttt import SGDTTT, check_coverage, sliding_windows
from pgolf.ttt import TTTConfig

torch.set_num_threads(1)
CPU = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
L, STRIDE = 16, 4
CFG = {
    "seq_len": L,
    "global_lr": 0.05,
    "global_momentum": 0.9,
    "global_epochs": 2,
    "global_chunk_tokens": 40,
    "global_batch_seqs": 1,
    "global_grad_clip": 1.0,
    "probe_batches": 2,
}


TINY = {
    "vocab_size": 64,
    "num_layers": 3,
    "model_dim": 32,
    "num_heads": 2,
    "num_kv_heads": 1,
    "rope_dims": 8,
    "gate_window": 4,
    "num_loops": 0,
    "loop_start": 0,
    "loop_end": 0,
    "parallel_start_layer": 2,
    "parallel_residual": "single",
    "smear_gate": False,
    "sparse_attn_gate": False,
    "cross_document": True,
    "xsa_last_n": 3,
}


def tiny_model(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(**{**TINY, **overrides})
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def stream(n=150, seed=0) -> ValData:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 64, n)
    tokens[[0, 30, 31, 77]] = 1  # documents, one of them empty
    return ValData(tokens=tokens.astype(np.int64), position_bytes=rng.integers(0, 4, n).astype(np.int32), docs=4)


def context_start(t: int) -> int:
    """#1572's window for target t: the first window scores 1..L, later ones the last STRIDE of their L."""
    return 0 if t <= L else math.ceil((t - L) / STRIDE) * STRIDE


@pytest.mark.parametrize("n", [L + 1, 40, 41, 57, 150])
def test_windows_give_each_target_its_scripts_context(n):
    seen = {}
    for start, first, end in sliding_windows(n, L, STRIDE):
        assert end - 1 - start <= L
        for t in range(first, end):
            assert t not in seen
            seen[t] = start
    assert seen == {t: context_start(t) for t in range(1, n)}


def slow_nll(model, tokens, t):
    """NLL of target t predicted from its window's context alone: one forward per target."""
    ctx = torch.as_tensor(tokens[context_start(t) : t])[None]
    with torch.no_grad():
        logits = model(ctx)[0, -1]
    return float(-torch.log_softmax(logits.double(), -1)[tokens[t]])


def run_sgd(model, val, **overrides):
    cfg = TTTConfig(**{**CFG, **overrides})
    return SGDTTT(model, val, cfg, L, STRIDE, truncate_tail=False, dist=CPU, batch_seqs=3).run()


@pytest.mark.parametrize("cross_document", [True, False])
def test_scoring_without_training_is_the_per_target_definition(cross_document):
    val = stream()
    model = tiny_model(cross_document=cross_document)
    result = run_sgd(model, val, global_epochs=0)
    expected = sum(slow_nll(model, val.tokens, t) for t in range(1, val.tokens.size))
    assert result.totals["scored"] == val.tokens.size - 1  # every target, the BOS ones too
    assert result.totals["val_loss"] * result.totals["scored"] == pytest.approx(expected, rel=1e-5)
    assert result.totals["bytes"] == int(val.position_bytes[1:].sum())
    assert check_coverage(result.coverage) == val.tokens.size - 1


def plain_loop(model, val, cfg):
    """The recipe written out: chunk by chunk, score its targets one by one, then SGD over its whole sequences."""
    tokens, total = val.tokens, val.tokens.size - 1
    n_chunks = -(-total // cfg.global_chunk_tokens)
    owner = {
        t: min((t - 1 if t <= L else context_start(t) + L - STRIDE) // cfg.global_chunk_tokens, n_chunks - 1)
        for t in range(1, total + 1)
    }
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=cfg.global_lr, momentum=cfg.global_momentum)
    loss_sum = 0.0
    for c in range(n_chunks):
        model.eval()
        loss_sum += sum(slow_nll(model, tokens, t) for t in range(1, total + 1) if owner[t] == c)
        if c == n_chunks - 1:
            break
        lo = c * cfg.global_chunk_tokens
        seqs = (min(lo + cfg.global_chunk_tokens, total) - lo) // L
        for group in opt.param_groups:
            group["lr"] = cfg.global_lr * 0.5 * (1 + math.cos(math.pi * c / (n_chunks - 1)))
        model.train()
        for _ in range(cfg.global_epochs):
            for s in range(seqs):
                x = torch.as_tensor(tokens[lo + s * L : lo + (s + 1) * L + 1])
                opt.zero_grad()
                model(x[None, :-1], x[None, 1:]).backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.global_grad_clip)
                opt.step()
    return loss_sum


def test_totals_and_weights_equal_a_plain_loop_and_scores_come_first():
    val = stream()
    model, reference = tiny_model(), tiny_model()
    result = run_sgd(model, val)
    expected = plain_loop(reference, val, TTTConfig(**CFG))
    assert result.chunks == 4 and result.steps == 2 * (2 + 2 + 2)  # chunks of 40 targets hold 2 whole sequences
    assert result.totals["val_loss"] * result.totals["scored"] == pytest.approx(expected, rel=1e-5)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
    untrained = run_sgd(tiny_model(), val, global_epochs=0)
    assert abs(untrained.totals["val_loss"] - result.totals["val_loss"]) > 1e-4  # training changed later scores
    probe = result.probe
    assert probe["chunks"] == 2 and probe["passed"]
    assert probe["max_abs_diff_before_update"] <= 1e-6 < probe["max_abs_diff_after_update"]


def test_a_probe_catches_scoring_after_the_update(monkeypatch):
    """Scoring a chunk after training on it (the order swapped) fails the probe."""
    val = stream()
    ttt = SGDTTT(tiny_model(), val, TTTConfig(**CFG), L, STRIDE, truncate_tail=False, dist=CPU, batch_seqs=3)
    score, train = ttt._score_chunk, ttt._train_chunk
    pending = {}

    def late_score(windows, totals=None, coverage=None):
        if totals is None:
            return score(windows)
        pending["args"] = (windows, totals, coverage)
        return []

    def train_then_score(chunk, params, opt):
        steps = train(chunk, params, opt)
        recorded = score(*pending.pop("args"))
        ttt._recorded = recorded
        return steps

    monkeypatch.setattr(ttt, "_score_chunk", late_score)
    monkeypatch.setattr(ttt, "_train_chunk", train_then_score)
    probe_fn = ttt._probe
    monkeypatch.setattr(ttt, "_probe", lambda w, r, b, p: probe_fn(w, ttt._recorded, b, p))
    assert not ttt.run().probe["passed"]


def test_truncated_tail_keeps_whole_sequences():
    val = stream(n=150)
    result = SGDTTT(
        tiny_model(), val, TTTConfig(**{**CFG, "global_epochs": 0}), L, STRIDE, truncate_tail=True, dist=CPU
    ).run()
    assert result.totals["scored"] == (150 - 1) // L * L


WORKER = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from test_sgd_ttt import world_run
from pgolf import dist as pgdist
torch.set_num_threads(1)
d = pgdist.init(0)
out = world_run(d, batch_seqs=1)
if d.is_main:
    json.dump(out, open({out!r}, "w"))
pgdist.shutdown()
"""


def world_run(d, batch_seqs):
    result = SGDTTT(
        tiny_model(),
        stream(),
        TTTConfig(**{**CFG, "global_batch_seqs": batch_seqs}),
        L,
        STRIDE,
        truncate_tail=False,
        dist=d,
        batch_seqs=3,
    ).run()
    return {
        **result.totals,
        "coverage_ok": check_coverage(result.coverage) == stream().tokens.size - 1,
        "probe": result.probe["passed"],
    }


def test_two_ranks_equal_one_rank_with_their_joint_batch(tmp_path):
    """gloo with two ranks, one sequence each per step, averages to one rank's two-sequence steps: same totals."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script, out = tmp_path / "worker.py", tmp_path / "world2.json"
    script.write_text(WORKER.format(tests=str(root / "tests"), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = world_run(CPU, batch_seqs=2), json.loads(out.read_text())
    assert one["scored"] == two["scored"] and one["bytes"] == two["bytes"]
    assert one["val_loss"] == pytest.approx(two["val_loss"], rel=1e-5)
    assert one["coverage_ok"] and two["coverage_ok"] and one["probe"] and two["probe"]
