"""cuDNN's fused attention over the packed stream, the `cudnn` backend of pgolf.attention (`model.attention: cudnn`;
"auto" never chooses it, so a script whose config does not name it leaves this module out).

aten's cuDNN kernel takes (total, H, D) tensors cut at cumulative sequence lengths (the nested-tensor SDPA path)
and carries its own derivative, so autograd reaches cuDNN's backward kernel through it. It has no sliding window
and wants as many K/V heads as Q heads (cudnn_varlen repeats them).
"""

import torch

from .attention import Backend

_PROBE: list = []  # [None] when the kernels ran here, [why not] otherwise; filled once per process


def cudnn_probe() -> str | None:
    """Run the cuDNN packed kernels once on a tiny input, forward and backward: None when they work, else why not."""
    if not _PROBE:
        try:
            q, k, v = (
                torch.randn(24, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)
            )
            cu = torch.tensor([0, 8, 24], device="cuda", dtype=torch.int32)
            cudnn_varlen(q, k, v, cu, 16).sum().backward()
            torch.cuda.synchronize()
            _PROBE.append(None)
        except (RuntimeError, AttributeError) as e:
            _PROBE.append(f"{type(e).__name__}: {e}".splitlines()[0])
    return _PROBE[0]


def cudnn_backend(cuda: bool, windowed: bool) -> Backend | None:
    """The backend where the kernels run (CUDA, no sliding window, the probe passed), else None."""
    return Backend("cudnn", cudnn_varlen) if cuda and not windowed and cudnn_probe() is None else None


def cudnn_varlen(q, k, v, cu_seqlens, max_seqlen: int, window: int | None = None) -> torch.Tensor:
    """Causal attention within each segment of a packed (total, H, D) stream through cuDNN, K/V heads repeated up to
    Q's; 1/sqrt(D) scale. `window` is pgolf.attention's argument and always None here (cudnn_backend refuses a
    sliding window)."""
    if k.size(1) != q.size(1):
        k, v = (t.repeat_interleave(q.size(1) // t.size(1), dim=1) for t in (k, v))
    out = torch.ops.aten._cudnn_attention_forward(
        q, k, v, None, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, True, 0.0, True, False
    )
    return out[0]
