"""#1493's parallel residual (`model.parallel_residual: single`, #1572): from model.parallel_start_layer on, attention
and MLP both read a block's mixed input and add to it. pgolf.model imports this module only where the config picks
it, so a script with #1855's two lanes (the record's) leaves it out (pgolf.codepack.OPTIONAL).
"""

from .model import rms_norm


def single_lane_block(model, p, i: int, slot: int, x, x0):
    """Block i of `model` (a pgolf.model.GPT) on x as one lane; `p` is the forward's pgolf.model._Pass."""
    blk, dt = model.blocks[i], x.dtype
    w = model._bank(p, i)
    mix = blk.resid_mix.to(dt)
    x = mix[0] * x + mix[1] * x0
    attn_out = model._attention(p, i, slot, rms_norm(x) * blk.ln_scale_factor, w)
    mlp_out = model._mlp(p, i, slot, rms_norm(x) * blk.ln_scale_factor, w)
    return x + blk.attn_scale.to(dt) * attn_out + blk.mlp_scale.to(dt) * mlp_out
