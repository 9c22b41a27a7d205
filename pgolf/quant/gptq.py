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


def _gptq(W, H, scale, limit, block_size, damp, hi_cols=None, scale_hi=None) -> torch.Tensor:
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
    q = _gptq(W, H, scale, clip_range(bits), block_size, damp)
    return q, scale


def percentile_scale(W: torch.Tensor, percentile: float, limit: int) -> torch.Tensor:
    """#1512's row clip: the row's `percentile` quantile of |w| (1.0: its max) / limit, at least 1/limit, in fp16."""
    absW = W.float().abs()
    clip = absW.amax(dim=1) if percentile >= 1.0 else torch.quantile(absW, percentile, dim=1)
    return (clip / limit).clamp_min(1.0 / limit).to(torch.float16)


def gptq_quantize_percentile(W, H, bits, percentiles, block_size=128, damp=0.01):
    """#1512's clip search: one GPTQ pass per row-clip percentile, keeping the codes whose reconstruction has the
    lowest mean squared error against W (the first on a tie); returns (q, scale) as gptq_quantize."""
    limit = clip_range(bits)
    target = W.float().clone()
    target[:, H.diagonal() == 0] = 0.0  # GPTQ zeroes dead columns first
    best = None
    for p in percentiles:
        scale = percentile_scale(W, p, limit)
        q = _gptq(W, H, scale, limit, block_size, damp)
        mse = float((target - q.float() * scale.float().to(q.device).unsqueeze(1)).pow(2).mean())
        if best is None or mse < best[0]:
            best = (mse, q, scale)
    return best[1], best[2]


def column_mask(cols: int, groups) -> torch.Tensor:
    mask = torch.zeros(cols, dtype=torch.bool)
    for start, size in groups:
        mask[start : start + size] = True
    return mask


def gptq_quantize_protected(W, H, bits, clip_sigmas, groups, block_size=128, damp=0.01):
    """GPTQ with the column ranges `groups` [(start, size)] at int8 under a second per-row scale
    clip_sigmas·std(row)/127; returns (q, scale, scale_hi)."""
    scale = sdclip_scale(W, clip_sigmas, clip_range(bits))
    scale_hi = sdclip_scale(W, clip_sigmas, AWQ_CLIP_RANGE)
    mask = column_mask(W.shape[1], groups)
    q = _gptq(W, H, scale, clip_range(bits), block_size, damp, hi_cols=mask, scale_hi=scale_hi)
    return q, scale, scale_hi
