"""#1019's RoPE for sequences longer than training's (model.rope_train_len, #1512): a sequence of T > train_len
tokens rotates with the base raised to base * (T / train_len)^(d / (d - 2)), d the rotated dims; shorter ones keep
the base.
"""

import torch


def check_config(config, bad):
    """model.rope_train_len (`bad(key, why)` raises)."""
    if config.rope_train_len < 1 or config.rope_dims < 4:
        bad("rope_train_len", "a positive length (and rope_dims of at least 4) or null")


def scaled_inv_freq(rotary, T: int, device) -> torch.Tensor:
    """Inverse frequencies (rope_dims / 2,) fp32 of a pgolf.model.Rotary for T > its train_len tokens."""
    rd = rotary.rope_dims
    base = rotary.base * (T / rotary.train_len) ** (rd / (rd - 2))
    return 1.0 / base ** (torch.arange(0, rd, 2, dtype=torch.float32, device=device) / rd)
