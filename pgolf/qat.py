"""Quantization-aware training (#1512's bank QAT): late in training the forward pass sees int6 weights.

    w_seen = fake_quant_int6(w)                  # banks: levels -31..31, per-row absmax scale
    w_seen = fake_quant_int6(w, low=-32)         # #1512's CastedLinear layers: levels -32..31

Each row's scale is max|w| / 31 (at least 1/31), the weight is rounded to scale x level, and the gradient passes
straight through (d w_seen / d w = 1). The rows are the last dimension's, so a (L, rows, cols) bank quantizes each
of its matrices per row.
"""

import torch

INT6_MAX = 31  # the scale's divisor and the top level
BANK_LOW = -31  # #1512's banks (what its post-training int6 quantizer produces)
LINEAR_LOW = -32  # #1512's CastedLinear layers clamp one level lower


def fake_quant_int6(w: torch.Tensor, low: int = BANK_LOW) -> torch.Tensor:
    """w with its values replaced by their int6 reconstruction in the forward pass, identity in the backward."""
    with torch.no_grad():
        w32 = w.float()
        scale = (w32.abs().amax(dim=-1, keepdim=True) / INT6_MAX).clamp_min(1.0 / INT6_MAX)
        w_q = (torch.clamp(torch.round(w32 / scale), low, INT6_MAX) * scale).to(w.dtype)
    return w + (w_q - w).detach()
