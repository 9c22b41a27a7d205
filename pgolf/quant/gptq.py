"""GPTQ with SDClip scales (docs/record-stack.md §5.2), optionally with AWQ-lite int8 column groups in the same pass (§6.2).

Columns are quantized one at a time in act-order (descending diag H); each column's rounding error, divided by the
matching diagonal of the upper Cholesky factor of H⁻¹, is pushed onto the not yet quantized columns, first inside
the block, then onto all later columns at once.
"""

import torch

from ..errors import PgolfError

AWQ_CLIP_RANGE = 127  # protected columns are stored at int8
MIN_SCALE = 2.0**-24  # smallest positive fp16 value: a constant row still gets a usable scale


def clip_range(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def sdclip_scale(W: torch.Tensor, clip_sigmas: float, limit: int) -> torch.Tensor:
    """SDClip: per-row scale clip_sigmas·std(row)/limit (limit = the clip range), in fp16 (stored and used)."""
    scale = clip_sigmas * W.float().std(dim=1) / limit
    return scale.clamp_min(MIN_SCALE).to(torch.float16)


def inverse_hessian_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹; H must already have its dead columns patched."""
    H = H.clone()
    H.diagonal().add_(damp * H.diagonal().mean())
    L, info = torch.linalg.cholesky_ex(H)
    if info.item() == 0:
        U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if info.item() != 0:
        raise PgolfError(
            "GPTQ: the damped Hessian is not positive definite; raise gptq.damp in the quant preset "
            "or re-collect the Hessians (hessians.pt may be corrupt)"
        )
    return U


def gptq_codes(W, H, scale, limit, block_size, damp, hi_cols=None, scale_hi=None) -> torch.Tensor:
    """Integer codes of W (rows, cols) against H (cols, cols); columns in `hi_cols` use scale_hi and ±127."""
    rows, cols = W.shape
    W = W.float().clone()
    H = H.to(W.device, torch.float32).clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(H.diagonal(), descending=True)
    W = W[:, perm]
    U = inverse_hessian_factor(H[perm][:, perm], damp)
    hi = torch.zeros(cols, dtype=torch.bool) if hi_cols is None else hi_cols.cpu()
    hi = hi[perm.cpu()].tolist()
    lo_scale = scale.float().to(W.device)
    hi_scale = lo_scale if scale_hi is None else scale_hi.float().to(W.device)
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for j in range(i2 - i1):
            s, r = (hi_scale, AWQ_CLIP_RANGE) if hi[i1 + j] else (lo_scale, limit)
            w = W1[:, j]
            q = torch.clamp(torch.round(w / s), -r, r)
            Q[:, i1 + j] = q
            err = (w - q * s) / U1[j, j]
            W1[:, j:] -= err.unsqueeze(1) * U1[j, j:].unsqueeze(0)
            err1[:, j] = err
        W[:, i2:] -= err1 @ U[i1:i2, i2:]
    return Q[:, torch.argsort(perm)].to(torch.int8)


def gptq_quantize(W, H, bits, clip_sigmas, block_size=128, damp=0.01):
    """GPTQ + SDClip: (q int8 of W's shape in ±(2^(bits-1)-1), fp16 per-row scale); Ŵ = q·scale."""
    scale = sdclip_scale(W, clip_sigmas, clip_range(bits))
    q = gptq_codes(W, H, scale, clip_range(bits), block_size, damp)
    return q, scale
