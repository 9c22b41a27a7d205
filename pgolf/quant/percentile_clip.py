"""#1512's GPTQ clip search (`gptq.clip_percentiles`): row clips at quantiles of |w| instead of SDClip's sigmas.
pgolf.quant.state imports this module only where the preset sets clip_percentiles, so a script whose preset keeps
SDClip (the record's) leaves it out (pgolf.codepack.OPTIONAL).
"""

import torch

from .gptq import clip_range, gptq_codes


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
        q = gptq_codes(W, H, scale, limit, block_size, damp)
        mse = float((target - q.float() * scale.float().to(q.device).unsqueeze(1)).pow(2).mean())
        if best is None or mse < best[0]:
            best = (mse, q, scale)
    return best[1], best[2]
