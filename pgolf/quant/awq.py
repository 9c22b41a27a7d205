"""AWQ-lite (docs/record-stack.md §6.2): the globally most salient column groups get int8 inside the GPTQ pass.

Saliency of input column c = act_rms[c] · mean over rows of |W[:, c]|; a group of `group` consecutive columns
scores the sum of its columns' saliency (a last, shorter group counts too); the top-k groups over all eligible
tensors are protected. pgolf.quant.state and pgolf.quant.dequant import this module only where the preset turns
AWQ-lite on, so a script whose preset turns it off (the record's) leaves it out (pgolf.codepack.OPTIONAL).
"""

import torch

from ..errors import PgolfError
from .dequant import dequantize
from .gptq import AWQ_CLIP_RANGE, clip_range, gptq_codes, sdclip_scale

SUFFIXES = ("awqg_start", "awqg_size", "awqg_s_hi")  # a protected matrix's groups, beside its .q and .scale


def check_act_rms(matrices: dict, hessians: dict):
    """Refuse Hessians without one activation RMS per input column of each matrix (the saliency needs them)."""
    for name, W in matrices.items():
        rms = hessians.get("act_rms", {}).get(name)
        if rms is None or rms.numel() != W.shape[1]:
            raise PgolfError(
                f"hessians.pt: act_rms[{name}] (one RMS per input column) is missing or has the wrong size; "
                "re-run the hessians stage, which records it for AWQ-lite"
            )


def group_scores(W: torch.Tensor, act_rms: torch.Tensor, group: int) -> list[tuple[int, int, float]]:
    """(start, size, score) for every column group of W."""
    saliency = act_rms.float().to(W.device) * W.float().abs().mean(dim=0)
    cols = W.shape[1]
    return [
        (start, min(group, cols - start), saliency[start : start + group].sum().item())
        for start in range(0, cols, group)
    ]


def select_groups(weights: dict, act_rms: dict, top_k: int, group: int) -> list[dict]:
    """The top-k groups over all tensors in `weights`: [{"name", "start", "size", "score"}], best first."""
    ranked = [
        {"name": name, "start": start, "size": size, "score": score}
        for name, W in weights.items()
        for start, size, score in group_scores(W, act_rms[name], group)
    ]
    ranked.sort(key=lambda g: (-g["score"], g["name"], g["start"]))
    return ranked[:top_k]


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
    q = gptq_codes(W, H, scale, clip_range(bits), block_size, damp, hi_cols=mask, scale_hi=scale_hi)
    return q, scale, scale_hi


def quantize_protected(tensors: dict, name: str, W, H, spec, groups, memo, key, gptq_args: dict):
    """(q, scale) of matrix `name` by gptq_quantize_protected (`spec`: its class's bits and clip sigmas; memo and key
    as pgolf.quant.state.quantize_state's), its groups and their scale stored in `tensors`."""
    q, scale, scale_hi = memo(
        key, lambda: gptq_quantize_protected(W, H, spec.bits, spec.clip_sigmas, groups, **gptq_args)
    )
    starts, sizes = (torch.tensor(column, dtype=torch.int16) for column in zip(*groups))
    tensors.update({f"{name}.{suffix}": t for suffix, t in zip(SUFFIXES, (starts, sizes, scale_hi.cpu()))})
    return q, scale


def apply_awq_groups(W_hat, q, starts, sizes, scale_hi):
    """Overwrite the protected column groups of Ŵ with their int8 codes times the second per-row scale."""
    for start, size in zip(starts.tolist(), sizes.tolist()):
        W_hat[:, start : start + size] = dequantize(q[:, start : start + size], scale_hi)
    return W_hat
