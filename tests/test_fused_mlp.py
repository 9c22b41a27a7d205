"""The fused LeakyReLU² MLP: its Triton kernels (run by Triton's interpreter on the CPU) against the unfused MLP,
alone and inside the model, and where the model keeps the unfused path."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.test_model import batch, tiny_model

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def interpreted(code: str) -> dict:
    """Run `code` in a fresh interpreter with TRITON_INTERPRET=1 (read when the kernels are defined, so not here);
    it prints one JSON object last."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernels_match_the_unfused_mlp_and_its_gradients():
    result = interpreted("""
        import json, torch, torch.nn.functional as F
        from pgolf import fused_mlp
        from pgolf.fused_mlp import mlp, up_act
        torch.manual_seed(0)
        out = {}
        # rows and hidden width not multiples of the 256 x 128 tile; two K tiles; 6 tiles on os.cpu_count()
        # persistent programs
        for slope, persistent in ((0.5, False), (0.3, True)):
            fused_mlp.TILES = fused_mlp.Tiles(persistent=persistent)
            x = torch.randn(3, 100, 128, requires_grad=True)
            up = (torch.randn(320, 128) / 11).requires_grad_()
            down = (torch.randn(128, 320) / 18).requires_grad_()
            g = torch.randn(3, 100, 128)
            fused = mlp(x, up, down, slope)
            fused.backward(g)
            grads = [t.grad.clone() for t in (x, up, down)]
            for t in (x, up, down):
                t.grad = None
            ref = F.linear(F.leaky_relu(F.linear(x, up), slope).square(), down)
            ref.backward(g)
            rel = lambda a, b: float((a - b).abs().max() / b.abs().max())
            pre, post = up_act(x.detach().reshape(-1, 128), up.detach(), slope)
            out[f"slope {slope}, persistent {persistent}"] = {
                "shape": list(fused.shape), "out": rel(fused, ref),
                "grads": [rel(a, t.grad) for a, t in zip(grads, (x, up, down))],
                "pre": rel(pre, x.detach().reshape(-1, 128) @ up.detach().T),
                "post": rel(post, F.leaky_relu(pre, slope).square()),
                "negatives": float((pre < 0).float().mean()),
            }
        print(json.dumps(out))
    """)
    for slope, r in result.items():
        assert r["shape"] == [3, 100, 128]
        assert 0.3 < r["negatives"] < 0.7, "both branches of the activation are exercised"
        assert r["out"] < 1e-5 and r["pre"] < 1e-5 and r["post"] < 1e-5, (slope, r)
        assert max(r["grads"]) < 1e-5, (slope, r)


def test_model_with_the_fused_mlp_matches_the_unfused_model():
    result = interpreted("""
        import json, torch
        from pgolf import fused_mlp
        from tests.test_model import batch, tiny_model
        # K tiles of 64: model_dim 64, hidden 128
        model = tiny_model(model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=4).train()
        ids = batch()
        losses, grads = [], []
        for mlp in (None, fused_mlp.mlp):
            model.fused_mlp = mlp
            model.zero_grad()
            loss = model(ids[:, :-1], ids[:, 1:])
            loss.backward()
            losses.append(float(loss))
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        worst = max(float((grads[1][n] - g).abs().max() / g.abs().max().clamp_min(1e-12)) for n, g in grads[0].items())
        print(json.dumps({"losses": losses, "worst_grad": worst}))
    """)
    unfused, fused = result["losses"]
    assert fused == pytest.approx(unfused, abs=1e-5)
    assert result["worst_grad"] < 1e-4


def test_hooked_passes_and_the_cpu_keep_the_unfused_mlp():
    def refuse(*args):
        raise AssertionError("the fused MLP ran in a pass with a capture or adapters hook")

    model = tiny_model()
    ids = batch()
    reference = model(ids)
    assert model.enable_fused_mlp(torch.device("cpu")) is False and model.fused_mlp is None
    model.fused_mlp = refuse
    captured = []
    logits = model(ids, capture=lambda name, rows: captured.append(name))
    assert torch.equal(logits, reference) and any(".mlp.fc." in n for n in captured)
    assert torch.equal(model(ids, adapters=lambda kind, slot, x: None), reference)
    with pytest.raises(AssertionError, match="fused MLP ran"):
        model(ids)


def test_reduction_dim_not_a_multiple_of_the_k_tile_is_refused():
    from pgolf.fused_mlp import TILES, mlp

    x, up, down = torch.randn(4, 100), torch.randn(256, 100), torch.randn(100, 256)
    with pytest.raises(ValueError, match=f"reduction dim 100 is not a multiple of the {TILES.block_k}-wide K tile"):
        mlp(x, up, down, 0.5)
