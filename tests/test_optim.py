"""Muon (Polar Express, sharded over ranks), AdamW groups, clipping and the schedules of pgolf.optim."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.optim import (
    OptimConfig,
    Optimizers,
    lr_multiplier,
    muon_direction,
    muon_momentum,
    newton_schulz,
    polar_express,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("shape", [(48, 112), (112, 48), (3, 40, 72)])
def test_polar_express_singular_values_near_one(shape):
    torch.manual_seed(0)
    s = torch.linalg.svdvals(polar_express(torch.randn(*shape)))
    assert s.min() > 0.8 and s.max() < 1.2


def test_polar_express_approximates_the_polar_factor():
    torch.manual_seed(1)
    g = torch.randn(64, 160, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    exact = u @ vh
    approx = polar_express(g.float()).double()
    assert (approx - exact).norm() / exact.norm() < 0.12
    # the same direction: the update has a large positive overlap with U Vᵀ
    assert (approx * exact).sum() / exact.norm() ** 2 > 0.95


# #1855 train_gpt.py `_PE_COEFFS` (from #1344), copied here so the reference does not read pgolf's table.
UPSTREAM_PE_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def reference_muon_update(g, buf, mu, row_normalize=True):
    """Slow float64 per-matrix Muon direction, written out from #1855's Muon.step and
    zeropower_via_newtonschulz5: X / (‖X‖ + 1e-7), five Polar Express iterations, no safety factor."""
    buf = mu * buf + g
    u = g + mu * buf
    if row_normalize:
        u = u / u.norm(dim=-1, keepdim=True)
    out = []
    for m in u:
        tall = m.shape[0] > m.shape[1]
        x = m.T if tall else m
        x = x / (x.norm() + 1e-7)
        for a, b, c in UPSTREAM_PE_COEFFS:
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        out.append((x.T if tall else x) * math.sqrt(max(1.0, m.shape[0] / m.shape[1])))
    return torch.stack(out), buf


def test_muon_direction_matches_reference():
    torch.manual_seed(2)
    g, buf = torch.randn(3, 40, 24), torch.randn(3, 40, 24)
    expected, expected_buf = reference_muon_update(g.double(), buf.double(), 0.95)
    got = muon_direction(g, buf, torch.tensor(0.95), True)
    assert torch.allclose(buf.double(), expected_buf, atol=1e-5)
    assert torch.allclose(got.double(), expected, atol=2e-3)


@pytest.mark.parametrize("shape", [(24, 56), (56, 24)])
def test_newton_schulz_maps_singular_values_by_the_classic_quintic(shape):
    """Each iteration sends every singular value s to 3.4445 s - 4.775 s^3 + 2.0315 s^5 (#1572's coefficients),
    starting from the Frobenius-normalized matrix, and keeps the singular vectors."""
    torch.manual_seed(3)
    g = torch.randn(*shape, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    s = s / s.square().sum().sqrt()
    for _ in range(5):
        s = 3.4445 * s - 4.775 * s**3 + 2.0315 * s**5
    expected = u @ torch.diag(s) @ vh
    got = newton_schulz(g.float(), 5).double()
    assert torch.allclose(got, expected, atol=1e-4)
    assert s.min() > 0.5 and s.max() < 1.3  # the quintic's band around 1, unlike Polar Express's 5 coefficients


def test_muon_direction_newton_schulz_backend():
    torch.manual_seed(4)
    g, buf = torch.randn(2, 40, 24), torch.zeros(2, 40, 24)
    got = muon_direction(g, buf.clone(), torch.tensor(0.9), False, "newton_schulz", 5)
    update = g + 0.9 * g  # Nesterov from a zero buffer
    expected = newton_schulz(update, 5) * math.sqrt(40 / 24)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, muon_direction(g, buf.clone(), torch.tensor(0.9), False), atol=1e-3)


def test_unknown_muon_backend_is_refused():
    # by the config's check, which the DAG runs where it builds the config and codepack before it writes the script
    with pytest.raises(PgolfError, match="config train.muon_backend: 'svd' is not one of"):
        OptimConfig(muon_backend="svd")


def test_lr_schedule_shape():
    f = lambda frac: lr_multiplier(frac, 0.85, 0.1)  # noqa: E731
    assert f(0.0) == 1.0 and f(0.149) == 1.0
    assert f(0.15) == pytest.approx(1.0)
    assert f(0.575) == pytest.approx(0.5)
    assert f(0.9) == pytest.approx(0.1 / 0.85 * 1.0)
    assert f(0.95) == 0.1 and f(1.0) == 0.1  # the floor
    values = [f(i / 100) for i in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never increases
    assert lr_multiplier(0.5, 0.0, 0.1) == 1.0


def test_momentum_warmup():
    cfg = OptimConfig()
    assert muon_momentum(0, cfg) == pytest.approx(0.92)
    assert muon_momentum(750, cfg) == pytest.approx(0.945)
    assert muon_momentum(1500, cfg) == pytest.approx(0.97)
    assert muon_momentum(10_000, cfg) == pytest.approx(0.97)


def make_params(seed=0):
    torch.manual_seed(seed)
    return {
        "matrix": [torch.nn.Parameter(torch.randn(3, 16, 8)), torch.nn.Parameter(torch.randn(2, 8, 24))],
        "embed": [torch.nn.Parameter(torch.randn(32, 8))],
        "scalar": [torch.nn.Parameter(torch.ones(8)), torch.nn.Parameter(torch.zeros(2, 8))],
    }


def grads_for(step, rank, params):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(p.shape, generator=g) for group in params.values() for p in group]


def run_steps(opt, params, steps, world, rank=0, lr_mult=1.0):
    flat = [p for group in params.values() for p in group]
    for step in range(steps):
        if world == 1:  # a single process sees the mean of the ranks' gradients
            per_rank = [grads_for(step, r, params) for r in range(2)]
            grads = [sum(gs) / 2 for gs in zip(*per_rank)]
        else:
            grads = grads_for(step, rank, params)
        for p, g in zip(flat, grads):
            p.grad = g
        opt.step(lr_mult, muon_momentum(step, opt.cfg))
        opt.zero_grad()


def test_single_step_matches_reference_and_clips():
    params = make_params()
    before = {k: [p.detach().clone() for p in v] for k, v in params.items()}
    cfg = OptimConfig(grad_clip=0.3)
    opt = Optimizers(params, cfg)
    grads = grads_for(0, 0, params)
    flat = [p for group in params.values() for p in group]
    for p, g in zip(flat, grads):
        p.grad = g.clone()
    norm = opt.step(0.5, 0.92)
    total = math.sqrt(sum(float(g.square().sum()) for g in grads))
    assert float(norm) == pytest.approx(total, rel=1e-5)
    scale = 0.3 / (total + 1e-6)
    lr = cfg.matrix_lr * 0.5
    for p0, p, g in zip(before["matrix"], params["matrix"], grads[:2]):
        update, _ = reference_muon_update((g * scale).double(), torch.zeros_like(g).double(), 0.92)
        expected = p0.double() * (1 - lr * cfg.muon_wd) - lr * update
        assert torch.allclose(p.detach().double(), expected, atol=1e-4)
    # AdamW's first step moves each clipped-gradient coordinate by ~lr (sign of g), after decoupled decay
    emb0, emb, g = before["embed"][0], params["embed"][0], grads[2]
    expected = emb0 * (1 - cfg.embed_lr * 0.5 * cfg.embed_wd) - cfg.embed_lr * 0.5 * torch.sign(g)
    assert torch.allclose(emb.detach(), expected, atol=1e-4)


def test_state_dict_round_trip_continues_identically():
    a_params, b_params = make_params(), make_params()
    a, b = Optimizers(a_params, OptimConfig()), Optimizers(b_params, OptimConfig())
    run_steps(a, a_params, 2, world=1)
    run_steps(b, b_params, 2, world=1)
    state = b.state_dict()
    c_params = {k: [torch.nn.Parameter(p.detach().clone()) for p in v] for k, v in b_params.items()}
    c = Optimizers(c_params, OptimConfig())
    c.load_state_dict(state)
    for opt, params in ((a, a_params), (c, c_params)):
        p = [q for group in params.values() for q in group]
        for q, g in zip(p, grads_for(7, 0, params)):
            q.grad = g
        opt.step(1.0, 0.95)
    for pa, pc in zip(*(sum(x.values(), []) for x in (a_params, c_params))):
        assert torch.equal(pa, pc)


WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r}); sys.path.insert(0, {repo!r})
    from test_optim import make_params, run_steps
    from pgolf.optim import OptimConfig, Optimizers
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    params = make_params()
    opt = Optimizers(params, OptimConfig(grad_clip_scope=sys.argv[2]), world=world, rank=rank)
    run_steps(opt, params, 3, world=world, rank=rank, lr_mult=0.7)
    state = opt.state_dict()
    if rank == 0:
        torch.save({{"params": {{k: [p.detach() for p in v] for k, v in params.items()}}, "state": state}}, sys.argv[1])
    dist.destroy_process_group()
    """
)


def run_two_ranks(tmp_path, scope):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), repo=str(REPO)))
    out = tmp_path / f"rank0_{scope}.pt"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(script),
        str(out),
        scope,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


def clipped(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_ on one rank's gradients, written out."""
    norm = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
    return [g * min(1.0, max_norm / (norm + 1e-6)) for g in grads]


def test_sharded_muon_on_two_ranks_equals_one_process(tmp_path):
    """Global scope: two ranks equal one process fed the mean gradient (clipped after averaging)."""
    sharded = run_two_ranks(tmp_path, "global")
    params = make_params()
    opt = Optimizers(params, OptimConfig(grad_clip_scope="global"))
    run_steps(opt, params, 3, world=1, lr_mult=0.7)
    for name, group in params.items():
        for p, q in zip(group, sharded["params"][name]):
            assert torch.allclose(p.detach(), q, atol=1e-5), name
    for a, b in zip(opt.state_dict()["muon_buffers"], sharded["state"]["muon_buffers"]):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_local_clip_scope_clips_each_rank_before_the_average(tmp_path):
    """Local scope (#1855): two ranks equal one process fed the mean of each rank's own clipped gradient, and
    differ from the global scope when the ranks' gradients differ."""
    local = run_two_ranks(tmp_path, "local")
    glob = run_two_ranks(tmp_path, "global")
    cfg = OptimConfig(grad_clip_scope="global", grad_clip=0.0)  # the clip is done by hand below
    params = make_params()
    opt = Optimizers(params, cfg)
    flat = [p for group in params.values() for p in group]
    for step in range(3):
        per_rank = [clipped(grads_for(step, r, params), OptimConfig().grad_clip) for r in range(2)]
        for p, gs in zip(flat, zip(*per_rank)):
            p.grad = sum(gs) / 2
        opt.step(0.7, muon_momentum(step, cfg))
        opt.zero_grad()
    for name, group in params.items():
        for p, q, r in zip(group, local["params"][name], glob["params"][name]):
            assert torch.allclose(p.detach(), q, atol=1e-5), name
    differs = [
        not torch.allclose(q, r, atol=1e-4)
        for name in params
        for q, r in zip(local["params"][name], glob["params"][name])
    ]
    assert any(differs)


def test_unknown_clip_scope_is_refused():
    with pytest.raises(PgolfError, match="grad_clip_scope: 'ddp'"):
        OptimConfig(grad_clip_scope="ddp")
