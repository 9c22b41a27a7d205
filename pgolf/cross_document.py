"""Attention across documents (model.cross_document, #1493/#1572, and #1512's rows and windows): a BOS is no
boundary; each row, or each max_seqlen piece of a packed row, is plainly causal. The model cuts its batches here
and takes the segments' first positions as the places where the per-dimension smear and the key offset restart.

    cu_seqlens = window_offsets(ids.shape, max_seqlen, ids.device)
    stops = segment_starts(layout.doc_ids)
"""

import torch


def window_offsets(shape, max_len: int | None, device) -> torch.Tensor:
    """cu_seqlens of a (B, T) batch cut only at row starts and every `max_len` tokens of a row."""
    B, T = shape
    step = min(max_len or T, T)
    starts = (torch.arange(B)[:, None] * T + torch.arange(0, T, step)[None, :]).flatten()
    return torch.cat([starts, torch.tensor([B * T])]).to(device=device, dtype=torch.int32)


def segment_starts(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: each row's first position and every position whose segment id differs from the one before."""
    first = torch.ones_like(doc_ids[:, :1], dtype=torch.bool)
    return torch.cat([first, doc_ids[:, 1:] != doc_ids[:, :-1]], dim=1)
