"""The token-side modules of the #1019 base that #1512 builds on: BigramHash, shared value embeddings and the
per-dimension SmearGate.

    bigram = BigramHash(3072, 112, 512); x = tok_emb(ids) + bigram(ids)
    ve = ValueEmbedding(1024, 128, kv_dim); v = v + ve(ids) * layer_scale     # on model.value_embed_layers
    x = smear_per_dim(x, gate, ids == BOS_ID)    # x_t <- (1 - s) x_t + s x_{t-1}, s = sigmoid(gate) per dimension

BigramHash hashes (previous token, token) into `buckets - 1` rows, (36313 t_i) xor (27191 t_{i-1}) mod
(buckets - 1); position 0 of a row, which has no previous token, uses the last row. The table starts at zero,
its projection to the model width is orthogonal and the output is scaled by a learned scalar (0.05 at init).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

BIGRAM_MULT = (36313, 27191)  # (current, previous) token multipliers of #1019's hash


def check_config(config, bad):
    """The model config's #1019 options (where one is on; `bad(key, why)` raises): layer indices made ints."""
    if config.smear_gate and config.smear_per_dim:
        bad("smear_per_dim", "choose one SmearGate: turn smear_gate off to use the per-dimension one")
    if config.bigram_buckets < 0 or config.bigram_buckets == 1 or config.bigram_dim < 1:
        bad("bigram_buckets", "0 (off) or at least 2 rows, with bigram_dim at least 1")
    if config.value_embed_layers is not None:
        config.value_embed_layers = [int(i) for i in config.value_embed_layers]
        if any(not 0 <= i < config.num_layers for i in config.value_embed_layers) or config.value_embed_dim < 1:
            bad("value_embed_layers", f"layer indices in 0..{config.num_layers - 1}, value_embed_dim at least 1")


def bigram_hash(ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """(B, T) token ids -> (B, T) int64 rows of the BigramHash table."""
    t = ids.to(torch.int32)
    mod = buckets - 1
    pairs = torch.bitwise_xor(BIGRAM_MULT[0] * t[..., 1:], BIGRAM_MULT[1] * t[..., :-1]) % mod
    return torch.cat([torch.full_like(t[..., :1], mod), pairs], dim=-1).long()


def _project(h: torch.Tensor, proj: nn.Linear, qat: bool) -> torch.Tensor:
    """#1512's CastedLinear: weights cast to the input dtype, fake int6 (levels -32..31) under QAT."""
    w = proj.weight
    if qat:  # pgolf.qat ships only where late QAT runs (pgolf.codepack.OPTIONAL)
        from .qat import LINEAR_LOW, fake_quant_int6

        w = fake_quant_int6(w, LINEAR_LOW)
    return F.linear(h, w.to(h.dtype))


class BigramHash(nn.Module):
    def __init__(self, buckets: int, dim: int, model_dim: int):
        super().__init__()
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, dim)
        self.proj = nn.Linear(dim, model_dim, bias=False)
        self.scale = nn.Parameter(torch.tensor(0.05))

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.zeros_(self.embed.weight)
        nn.init.orthogonal_(self.proj.weight)
        self.scale.fill_(0.05)

    def forward(self, ids: torch.Tensor, dtype, qat: bool = False) -> torch.Tensor:
        h = self.embed(bigram_hash(ids, self.buckets)).to(dtype)
        return _project(h, self.proj, qat) * self.scale.to(dtype)


class ValueEmbedding(nn.Module):
    """One table shared by the value-embedding layers (each has its own scalar scale, held by the GPT)."""

    def __init__(self, vocab_size: int, dim: int, kv_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.proj = nn.Linear(dim, kv_dim, bias=False)
        self.scale = nn.Parameter(torch.tensor(0.1))

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.embed.weight, std=0.01)
        nn.init.orthogonal_(self.proj.weight)
        self.scale.fill_(0.1)

    def forward(self, ids: torch.Tensor, dtype, qat: bool = False) -> torch.Tensor:
        return _project(self.embed(ids).to(dtype), self.proj, qat) * self.scale.to(dtype)


def smear_per_dim(x: torch.Tensor, gate: torch.Tensor, starts: torch.Tensor | None = None) -> torch.Tensor:
    """#1019's SmearGate: every dimension mixes in the previous position's by sigmoid(gate); position 0 of a row
    mixes in zeros, and so do the positions marked in `starts` (B, T) bool. #1019 marks none (its rows run across
    documents); pgolf's model marks its documents' BOS, so nothing carries over from the previous document."""
    s = torch.sigmoid(gate.to(x.dtype))
    prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    if starts is not None:
        prev = prev * (~starts).to(x.dtype).unsqueeze(-1)
    return (1 - s) * x + s * prev
