"""pgolf.kernels: the fused cross-entropy and MLP against float64 autograd of the unfused definitions, on the torch
path (the CPU's) and on the Triton kernels themselves, run by Triton's interpreter on the CPU."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pgolf import kernels
from pgolf.model import GPT, ModelConfig

CAP, SLOPE = 30.0, 0.5


def ce_case(seed=0, rows=37, vocab=2500):
    """Logits spread well past the cap, and one ignored target."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * 40
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[3] = kernels.IGNORE_INDEX
    return logits, targets


def mlp_case(seed=0, rows=600, dim=128, hidden=256):
    """More rows than one tile holds, and a partial last tile."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(rows, dim, generator=g),
        torch.randn(hidden, dim, generator=g) * 0.1,
        torch.randn(dim, hidden, generator=g) * 0.1,
    )


def grads(fn, *inputs, weight=None):
    """fn's output and the gradients of sum(weight * output) for its inputs."""
    leaves = [x.clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    weight = torch.ones_like(out) if weight is None else weight.to(out.dtype)
    (out * weight).sum().backward()
    return out.detach(), [x.grad for x in leaves]


def reference_ce(logits, targets, reduction):
    return F.cross_entropy(CAP * torch.tanh(logits / CAP), targets, reduction=reduction)


def reference_mlp(x, up, down):
    return F.linear(F.leaky_relu(F.linear(x, up), SLOPE).square(), down)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_softcapped_ce_matches_float64_reference(reduction):
    logits, targets = ce_case()
    weight = torch.rand(logits.size(0), dtype=torch.float64) if reduction == "none" else None
    out, (grad,) = grads(lambda x: kernels.softcapped_ce(x, targets, CAP, reduction), logits, weight=weight)
    ref, (ref_grad,) = grads(lambda x: reference_ce(x, targets, reduction), logits.double(), weight=weight)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-7)
    assert grad[3].abs().max() == 0  # the ignored target's row gets no gradient


def test_fused_mlp_matches_float64_reference():
    x, up, down = mlp_case()
    weight = torch.randn(x.size(0), down.size(0), dtype=torch.float64)
    out, got = grads(lambda *a: kernels.mlp(*a, SLOPE), x, up, down, weight=weight)
    ref, want = grads(reference_mlp, x.double(), up.double(), down.double(), weight=weight)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-3)


def test_model_loss_and_gradients_agree_with_the_unfused_path():
    config = ModelConfig(
        vocab_size=256, num_layers=4, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=8, loop_start=1,
        loop_end=2, xsa_last_n=2, parallel_start_layer=2,
    )  # fmt: skip
    torch.manual_seed(0)
    fused = GPT(config).train()
    plain = GPT(dataclasses.replace(config, fused_ce=False, fused_mlp=False)).train()
    plain.load_state_dict(fused.state_dict())
    ids = torch.randint(2, 256, (2, 64))
    ids[:, 0] = 1
    targets = torch.randint(0, 256, (2, 64))
    losses = []
    for model in (fused, plain):
        loss = model(ids, targets)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (name, a), b in zip(fused.named_parameters(), plain.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7, msg=name)


# The Triton kernels themselves, interpreted on the CPU (TRITON_INTERPRET must be set before triton is imported, so
# each case runs in a fresh interpreter). The interpreter has no bf16 tensor descriptors: the MLP runs in fp32.
INTERPRETED = """
import json, sys, torch
sys.path.insert(0, {tests!r})
import test_kernels as t
from pgolf import kernels
assert kernels._triton_on(torch.zeros(1)), "the Triton path is not taken"
case = sys.argv[1]
if case == "ce":
    logits, targets = t.ce_case(seed=1)
    for dtype in (torch.float32, torch.bfloat16):
        x = logits.to(dtype)
        out, (grad,) = t.grads(lambda y: kernels.softcapped_ce(y, targets, t.CAP, "none"), x)
        ref, (ref_grad,) = t.grads(lambda y: t.reference_ce(y, targets, "none"), x.double())
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        rtol, atol = (1e-4, 1e-6) if dtype == torch.float32 else (1e-2, 1e-3)  # bf16 gradients: 8 mantissa bits
        torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol, atol=atol)
else:
    x, up, down = t.mlp_case(seed=1)
    weight = torch.randn(x.size(0), down.size(0), dtype=torch.float64)
    out, got = t.grads(lambda *a: kernels.mlp(*a, t.SLOPE), x, up, down, weight=weight)
    ref, want = t.grads(t.reference_mlp, x.double(), up.double(), down.double(), weight=weight)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-3)
print(json.dumps({{"ok": case}}))
"""


@pytest.mark.parametrize("case", ["ce", "mlp"])
def test_triton_kernels_interpreted_match_reference(case):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    script = INTERPRETED.format(tests=os.path.dirname(__file__))
    run = subprocess.run([sys.executable, "-c", script, case], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"ok": case}
