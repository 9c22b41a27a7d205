"""#1512's int8 rows for the #1019 base's BigramHash and value-embedding tables and, with the preset's
`embed_plain_int8`, the token embedding. pgolf.quant.state imports this module only where such a tensor is there,
so a script whose model has neither table and whose preset quantizes tok_emb by GPTQ (the record's) leaves it out
(pgolf.codepack.OPTIONAL).
"""

import torch

INT8_CLIP_QUANTILE = 0.9999984  # #1512's per-row clip for the tables it stores in int8


def int8_rows_clipped(W: torch.Tensor):
    """#1512's int8 rows: clip each row at a quantile of |w|, scale clip/127 (at least 1/127), fp16 scales."""
    W = W.float()
    clip = torch.quantile(W.abs(), INT8_CLIP_QUANTILE, dim=1)
    scale = (clip / 127).clamp_min(1 / 127)
    clipped = torch.maximum(torch.minimum(W, clip[:, None]), -clip[:, None])
    q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale.to(torch.float16)
