"""Partial key offset (#1512, from the NanoGPT speedrun): the key's non-rotary dimensions at position t are the
ones computed at position t-1, so one layer can match "the token after the one I am looking for" (an induction
head in a single layer). The rotary dimensions keep their own position's values.

    k = partial_key_offset(k, rope_dims)           # k (B, T, H, D) after RoPE
    k = partial_key_offset(k, rope_dims, keep)     # keep (B, T) bool: positions that keep their own key

#1512 shifts within each row and keeps position 0's own key: its training rows and eval windows attend across
documents. The model passes keep = the first positions of its attention segments: each row or window with
model.cross_document (#1512's rule), else each document's BOS, so a key never carries the previous document's
last token.
"""

import torch


def shifted_dims(rope_dims: int, head_dim: int) -> int:
    """The first shifted dimension: rope_dims, or half the head when RoPE covers the whole head (#1512's rule)."""
    return rope_dims if rope_dims < head_dim else head_dim // 2


def partial_key_offset(k: torch.Tensor, rope_dims: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    if k.size(1) < 2:
        return k
    rd = shifted_dims(rope_dims, k.size(-1))
    rest = k[..., rd:]
    prev = torch.cat([rest[:, :1], rest[:, :-1]], dim=1)
    if keep is not None:
        prev = torch.where(keep[:, :, None, None], rest, prev)
    return torch.cat([k[..., :rd], prev], dim=-1)
