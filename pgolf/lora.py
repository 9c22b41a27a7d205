"""Batched per-document LoRA adapters for test-time training (docs/record-stack.md §8.2).

One adapter per document of a TTT batch on each enabled target (q, k, v, o, mlp of every virtual layer and
the LM head), plugged into the model through its `adapters(kind, slot, x)` hook: the output is
(x Aᵀ) Bᵀ · alpha/rank with A (batch, rank, in) ~ U(±1/√in) and B (batch, out, rank) = 0, so a fresh adapter
changes nothing. The tensors are created once and reset in place (keeps compiled graphs valid).
"""

import math

import torch
from torch import nn

KINDS = ("q", "k", "v", "o", "mlp", "head")


def adapter_shapes(model, enabled) -> dict:
    """{(kind, slot): (in, out)} for the enabled kinds, found by one tiny forward through the model's hook."""
    seen = {}

    def record(kind, slot, x):
        seen[(kind, slot)] = x.shape[-1]
        return None

    param = next(model.parameters())
    with torch.no_grad():
        model(torch.ones(1, 2, dtype=torch.long, device=param.device), adapters=record)
    state = {name: t.shape for name, t in model.unbanked_state_dict().items()}
    out_dims = {
        "q": state["blocks.0.attn.c_q.weight"][0],
        "k": state["blocks.0.attn.c_k.weight"][0],
        "v": state["blocks.0.attn.c_v.weight"][0],
        "o": state["blocks.0.attn.proj.weight"][0],
        "mlp": state["blocks.0.mlp.proj.weight"][0],
        "head": state["tok_emb.weight"][0],
    }
    return {key: (dim_in, int(out_dims[key[0]])) for key, dim_in in sorted(seen.items()) if enabled.get(key[0], True)}


class BatchedLoRA(nn.Module):
    def __init__(self, shapes: dict, batch: int, rank: int, alpha: float, device):
        super().__init__()
        self.scale = alpha / rank
        self.a = nn.ParameterDict()
        self.b = nn.ParameterDict()
        for (kind, slot), (dim_in, dim_out) in shapes.items():
            name = f"{kind}{slot}"
            self.a[name] = nn.Parameter(torch.empty(batch, rank, dim_in, device=device))
            self.b[name] = nn.Parameter(torch.zeros(batch, dim_out, rank, device=device))
        self.reinitialize(torch.Generator().manual_seed(0))

    @torch.no_grad()
    def reinitialize(self, generator: torch.Generator):
        """Fresh adapters (start, and after every global phase); A drawn on the CPU so every device agrees."""
        for a in self.a.values():
            bound = 1.0 / math.sqrt(a.shape[-1])
            a.copy_(torch.empty(a.shape).uniform_(-bound, bound, generator=generator))
        self.reset_b()

    @torch.no_grad()
    def reset_b(self):
        """Between batches: B back to zero, A kept as trained (warm-start A, #1767)."""
        for b in self.b.values():
            b.zero_()

    def forward(self, kind, slot, x):
        name = f"{kind}{slot}"
        if name not in self.a:
            return None
        a, b = self.a[name], self.b[name]
        return torch.bmm(torch.bmm(x, a.transpose(1, 2).to(x.dtype)), b.transpose(1, 2).to(x.dtype)) * self.scale
