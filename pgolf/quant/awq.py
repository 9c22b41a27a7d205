"""AWQ-lite (docs/record-stack.md §6.2): the globally most salient column groups get int8 inside the GPTQ pass.

Saliency of input column c = act_rms[c] · mean over rows of |W[:, c]|; a group of `group` consecutive columns
scores the sum of its columns' saliency (a last, shorter group counts too); the top-k groups over all eligible
tensors are protected.
"""

import torch


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
