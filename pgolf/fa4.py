"""FlashAttention-4 over the packed stream: FlashAttention's CuTe-DSL kernels (PyPI `flash-attn-4`, the `fa4` extra),
which have Hopper forward and backward kernels with cumulative sequence lengths.

Its own entry point is an autograd.Function whose host code JIT-compiles kernels, which torch.compile cannot trace;
here the forward and the backward are each one custom op with a fake implementation, so the compiled training step
keeps them whole and its graph (and AOTAutograd's cache) stays intact. Its kernels compile in the background while
torch.compile lowers the step (precompile). `model.attention: fa4` asks for it (pgolf.attention);
bench/attention_backends.py checks it against the float64 math reference on the card.
"""

import importlib
import multiprocessing
import os

import torch

_KERNELS: list = []  # [(forward, backward)] once imported, [None] where flash-attn-4 is missing


def kernels():
    """flash-attn-4's forward and backward host functions, or None where it is not installed."""
    if not _KERNELS:
        # flash-attn-4 JIT-compiles its kernels (tens of seconds on the first step) and reads where to keep them
        # when imported: beside Inductor's caches (pgolf.compile_cache), so a re-run or a resume skips that too
        inductor_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        if inductor_cache:
            os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
            os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", os.path.join(inductor_cache, "flash_attn_cute"))
        try:  # by name, as pgolf.attention imports FlashAttention-3: an optional kernel, not a requirement of the
            # submission folder (pgolf.submission lists the modules its script's code imports)
            interface = importlib.import_module("flash_attn.cute.interface")
        except ImportError:
            _KERNELS.append(None)
        else:
            _KERNELS.append((interface._flash_attn_fwd, interface._flash_attn_bwd))
    return _KERNELS[0]


# Explicit schemas: the submission's minified code has no annotations to infer them from.
@torch.library.custom_op(
    "pgolf::fa4_forward",
    mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int max_seqlen, int? window) -> (Tensor, Tensor)",
)
def _forward(q, k, v, cu_seqlens, max_seqlen, window):
    return _run_forward(q, k, v, cu_seqlens, max_seqlen, window)


def _run_forward(q, k, v, cu_seqlens, max_seqlen, window):
    out, lse, *_ = kernels()[0](
        q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen,
        max_seqlen_k=max_seqlen, causal=True, window_size_left=window, return_lse=True,
    )  # fmt: skip
    return out, lse


@_forward.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, window):
    if isinstance(q.size(0), int):  # torch.compile traces the step: the first real call's shapes are known now
        precompile(q.size(1), k.size(1), q.size(2), q.size(0), max_seqlen, window)
    return torch.empty_like(q), q.new_empty((q.size(1), q.size(0)), dtype=torch.float32)


@torch.library.custom_op(
    "pgolf::fa4_backward",
    mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor out, Tensor grad_out, Tensor lse, Tensor cu_seqlens, int max_seqlen, "
    "int? window) -> (Tensor, Tensor, Tensor)",
)
def _backward(q, k, v, out, grad_out, lse, cu_seqlens, max_seqlen, window):
    return _run_backward(q, k, v, out, grad_out, lse, cu_seqlens, max_seqlen, window)


def _run_backward(q, k, v, out, grad_out, lse, cu_seqlens, max_seqlen, window):
    dq, dk, dv = kernels()[1](
        q, k, v, out, grad_out.contiguous(), lse, causal=True, window_size_left=window,
        cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen,
    )  # fmt: skip
    return dq, dk, dv


@_backward.register_fake
def _(q, k, v, out, grad_out, lse, cu_seqlens, max_seqlen, window):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _save(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, window = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_seqlens)
    ctx.max_seqlen, ctx.window = max_seqlen, window


def _grads(ctx, grad_out, _grad_lse):  # the log-sum-exp is an internal output: nothing downstream reads it
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    return *_backward(q, k, v, out, grad_out, lse, cu_seqlens, ctx.max_seqlen, ctx.window), None, None, None


_forward.register_autograd(_grads, setup_context=_save)


def varlen_attention(q, k, v, cu_seqlens, max_seqlen: int, window: int | None = None) -> torch.Tensor:
    """Causal attention within each segment of a packed stream: q (total, H, D), k/v (total, Hkv, D), segments cut at
    `cu_seqlens` (int32), at most `window` keys back (None: the whole segment); scale 1/sqrt(D)."""
    return _forward(q, k, v, cu_seqlens, max_seqlen, window)[0]


_PRECOMPILING: set = set()  # the shapes whose kernels this process has started compiling


def precompile(heads: int, kv_heads: int, head_dim: int, tokens: int, max_seqlen: int, window) -> None:
    """Compile flash-attn-4's forward and backward kernels for these shapes in the background, one process each,
    into the persistent cache (kernels()). Called while torch.compile traces the step: the first real call, after
    tracing and lowering, then loads them from disk instead of compiling them one after the other in this process
    (bench/RESULTS.md has the seconds). Only where that cache is on, and on one process per host (local rank 0): the
    other ranks load what it writes."""
    if not os.environ.get("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR") or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    spawn = multiprocessing.get_context("spawn")  # CUDA is up in this process; a fork would inherit it
    for direction in ("forward", "backward"):
        shapes = (direction, heads, kv_heads, head_dim, tokens, max_seqlen, window)
        if shapes not in _PRECOMPILING:
            _PRECOMPILING.add(shapes)
            spawn.Process(target=compile_kernels, args=(*shapes, "cuda"), daemon=True).start()


def compile_kernels(direction, heads, kv_heads, head_dim, tokens, max_seqlen, window, device) -> None:
    """One direction's kernels for these shapes, compiled (and saved to the cache) on fake tensors: flash-attn-4
    compiles from shapes and dtypes alone, and nothing runs on the card."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(tokens, heads, head_dim, dtype=torch.bfloat16, device=device)
        k, v = (torch.empty(tokens, kv_heads, head_dim, dtype=torch.bfloat16, device=device) for _ in "kv")
        cu_seqlens = torch.empty(tokens // max_seqlen + 1, dtype=torch.int32, device=device)
        if direction == "forward":
            _run_forward(q, k, v, cu_seqlens, max_seqlen, window)
        else:
            lse = torch.empty(heads, tokens, dtype=torch.float32, device=device)
            _run_backward(q, k, v, torch.empty_like(q), torch.empty_like(q), lse, cu_seqlens, max_seqlen, window)
