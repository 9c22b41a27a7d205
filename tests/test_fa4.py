"""pgolf.fa4's custom ops: the wiring of flash-attn-4's host functions into autograd and torch.compile, with plain
torch kernels in their place (the real ones run on the card: bench/attention_backends.py checks them)."""

import os

import pytest
import torch

from pgolf import attention, fa4
from pgolf.attention import Backend, attend, build_layout, resolve_backend
from pgolf.errors import PgolfError

BOS = 1
calls: list = []


def _visible(cu_seqlens, total, window):
    seg = torch.zeros(total, dtype=torch.long)
    seg[cu_seqlens[1:-1].long()] = 1
    seg, pos = seg.cumsum(0), torch.arange(total)
    keep = (seg[:, None] == seg[None, :]) & (pos[None, :] <= pos[:, None])
    return keep & (pos[:, None] - pos[None, :] <= window) if window is not None else keep


def _math(q, k, v, cu_seqlens, window):
    """float64 (out, lse) of packed (total, H, D) tensors: the definition flash-attn-4's kernels compute."""
    rep = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / q.size(-1) ** 0.5
    scores = scores.masked_fill(~_visible(cu_seqlens, q.size(0), window), float("-inf"))
    lse = scores.logsumexp(-1)
    return torch.einsum("hqk,khd->qhd", (scores - lse[..., None]).exp(), v), lse


def kernel_forward(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window_size_left,
                   return_lse):  # fmt: skip
    """flash-attn-4's `_flash_attn_fwd` as pgolf calls it: (out, lse (H, total) float32, three internals)."""
    assert causal and return_lse and torch.equal(cu_seqlens_q, cu_seqlens_k) and max_seqlen_q == max_seqlen_k
    assert cu_seqlens_q.dtype == torch.int32 and int(torch.diff(cu_seqlens_q).max()) <= max_seqlen_q
    calls.append(("forward", window_size_left))
    out, lse = _math(q.double(), k.double(), v.double(), cu_seqlens_q, window_size_left)
    return out.to(q.dtype), lse.float(), None, None, None


def kernel_backward(q, k, v, out, dout, lse, *, causal, window_size_left, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                    max_seqlen_k):  # fmt: skip
    """flash-attn-4's `_flash_attn_bwd` as pgolf calls it: (dq, dk, dv) from the saved out and lse."""
    assert causal and dout.is_contiguous() and lse.shape == (q.size(1), q.size(0)) and lse.dtype == torch.float32
    calls.append(("backward", window_size_left))
    out64, lse64 = _math(q.double(), k.double(), v.double(), cu_seqlens_q, window_size_left)
    assert torch.allclose(lse64.float(), lse) and torch.allclose(out64.to(out.dtype), out)
    # FlashAttention's backward from the saved log-sum-exp: P = exp(S - lse), dS = P * (dO V^T - rowsum(dO * O))
    rep, scale = q.size(1) // k.size(1), q.size(-1) ** -0.5
    q64, dout64 = q.double(), dout.double()
    k64, v64 = (t.double().repeat_interleave(rep, 1) for t in (k, v))
    scores = (torch.einsum("qhd,khd->hqk", q64, k64) * scale).masked_fill(
        ~_visible(cu_seqlens_q, q.size(0), window_size_left), float("-inf")
    )
    p = (scores - lse.double()[..., None]).exp()
    dp = torch.einsum("qhd,khd->hqk", dout64, v64)
    ds = p * (dp - (dout64 * out.double()).sum(-1).T[..., None])
    dq = torch.einsum("hqk,khd->qhd", ds, k64) * scale
    dk = torch.einsum("hqk,qhd->khd", ds, q64) * scale
    dv = torch.einsum("hqk,qhd->khd", p, dout64)
    grads = dq, *(g.unflatten(1, (k.size(1), rep)).sum(2) for g in (dk, dv))
    return tuple(g.to(t.dtype) for g, t in zip(grads, (q, k, v)))


@pytest.fixture
def plain_kernels(monkeypatch):
    monkeypatch.setattr(fa4, "_KERNELS", [(kernel_forward, kernel_backward)])
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", raising=False)  # no background compiles (precompile)
    calls.clear()
    return Backend("fa4", fa4.varlen_attention)


def batch(seed=0, B=2, T=24, H=4, Hkv=2, D=8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 50, (B, T), generator=g)
    ids[0, [0, 7, 15]] = BOS
    ids[1, [5, 6]] = BOS
    q = torch.randn(B, T, H, D, generator=g)
    k, v = (torch.randn(B, T, Hkv, D, generator=g) for _ in range(2))
    return ids, q, k, v, torch.randn(B, T, H, D, generator=g)


def run(backend, ids, q, k, v, grad, window, compile_with=None):
    layout = build_layout(ids, backend, {window})
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))

    def fn(q, k, v):
        return attend(backend, q, k, v, layout, window)

    out = (torch.compile(fn, backend=compile_with, fullgraph=True) if compile_with else fn)(q, k, v)
    out.backward(grad)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("window", [None, 3])
def test_matches_sdpa_forward_and_gradients(plain_kernels, window):
    ids, q, k, v, grad = batch()
    got = run(plain_kernels, ids, q, k, v, grad, window)
    want = run(resolve_backend("sdpa", "cpu"), ids, q, k, v, grad, window)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert calls == [("forward", window), ("backward", window)]


def test_compiles_whole_with_autograd(plain_kernels):
    """fullgraph=True: the ops' fake implementations give the shapes, and the backward op lands in the graph."""
    ids, q, k, v, grad = batch(seed=1)
    got = run(plain_kernels, ids, q, k, v, grad, None, compile_with="aot_eager")
    calls.clear()
    want = run(plain_kernels, ids, q, k, v, grad, None)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_missing_or_off_card_is_refused(monkeypatch):
    monkeypatch.setattr(fa4, "_KERNELS", [None])
    with pytest.raises(PgolfError, match="'fa4' is not usable on cuda.*flash-attn-4"):
        resolve_backend("fa4", "cuda")
    monkeypatch.setattr(fa4, "_KERNELS", [(kernel_forward, kernel_backward)])
    with pytest.raises(PgolfError, match="'fa4' is not usable on cpu"):
        resolve_backend("fa4", "cpu")
    assert "fa4" not in attention.AUTO_ORDER["compiled"] + attention.AUTO_ORDER["eager"]


def test_kernels_are_cached_beside_inductors(monkeypatch, tmp_path):
    """flash-attn-4 reads its JIT cache settings when imported: kernels() points them into the compile cache first,
    and leaves settings the user made alone."""
    monkeypatch.setattr(fa4, "_KERNELS", [])
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    for name in ("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    seen = {}

    def import_module(name):
        seen.update((k, v) for k, v in os.environ.items() if k.startswith("FLASH_ATTENTION_CUTE_DSL"))
        raise ImportError(name)

    monkeypatch.setattr(fa4.importlib, "import_module", import_module)
    assert fa4.kernels() is None
    assert seen == {
        "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED": "1",
        "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR": str(tmp_path / "flash_attn_cute"),
    }
    monkeypatch.setattr(fa4, "_KERNELS", [])
    monkeypatch.setenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", "/elsewhere")
    fa4.kernels()
    assert seen["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == "/elsewhere"


class Spawned:
    """multiprocessing's spawn context as precompile uses it, recording the processes it would start."""

    def __init__(self):
        self.started = []

    def get_context(self, method):
        assert method == "spawn"
        return self

    def Process(self, target, args, daemon):
        assert target is fa4.compile_kernels and daemon
        return type("P", (), {"start": lambda _: self.started.append(args)})()


@pytest.fixture
def spawned(monkeypatch, tmp_path):
    recorder = Spawned()
    monkeypatch.setattr(fa4, "multiprocessing", recorder)
    monkeypatch.setattr(fa4, "_PRECOMPILING", set())
    monkeypatch.setenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return recorder


def test_tracing_the_step_precompiles_its_shapes_once(plain_kernels, spawned, monkeypatch):
    """torch.compile's trace runs the fake forward with the real shapes: both directions start compiling then, once
    per shape, and only on the host's first rank and where the persistent cache is on."""
    ids, q, k, v, grad = batch(seed=2)
    run(plain_kernels, ids, q, k, v, grad, 3, compile_with="aot_eager")
    shapes = (4, 2, 8, 48, 24, 3)  # heads, kv heads, head dim, packed tokens (B * T), max_seqlen, window
    assert spawned.started == [("forward", *shapes, "cuda"), ("backward", *shapes, "cuda")]
    fa4.precompile(*shapes)
    assert len(spawned.started) == 2
    monkeypatch.setattr(fa4, "_PRECOMPILING", set())
    monkeypatch.setenv("LOCAL_RANK", "1")
    fa4.precompile(*shapes)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR")
    fa4.precompile(*shapes)
    assert len(spawned.started) == 2


def test_compile_kernels_calls_both_kernels_on_fake_tensors(monkeypatch):
    """The background compile makes the very calls the ops make, on tensors that hold no data."""
    from torch._subclasses.fake_tensor import FakeTensor

    seen = []

    def forward(q, k, v, **kw):
        seen.append(("forward", q, k, v, kw))
        return torch.empty_like(q), q.new_empty((q.size(1), q.size(0))), None, None, None

    def backward(q, k, v, out, dout, lse, **kw):
        seen.append(("backward", q, k, v, kw))
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    monkeypatch.setattr(fa4, "_KERNELS", [(forward, backward)])
    for direction in ("forward", "backward"):
        fa4.compile_kernels(direction, 8, 4, 64, 4096, 2048, None, "cpu")
    assert [s[0] for s in seen] == ["forward", "backward"]
    for _, q, k, v, kw in seen:
        assert isinstance(q, FakeTensor) and q.shape == (4096, 8, 64) and q.dtype == torch.bfloat16
        assert k.shape == v.shape == (4096, 4, 64)
        assert kw["cu_seqlens_q"] is kw["cu_seqlens_k"] and kw["cu_seqlens_q"].dtype == torch.int32
        assert kw["max_seqlen_q"] == kw["max_seqlen_k"] == 2048 and kw["causal"] and kw["window_size_left"] is None
