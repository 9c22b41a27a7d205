"""Calibration sequences the model writes itself (#1512's GPTQ calibration: no training data is read after
training).

    seqs = generate(model, num_seqs=64, seq_len=4096, temperature=0.8, batch=8, seed=42, device=device)
    sums, seconds = collect(model, hessian_config, seed, dist)  # what pgolf.hessians runs for `source: self`

Each batch of `batch` sequences starts from uniformly random first tokens and is extended one token at a time by
sampling softmax(logits / temperature) of the full forward pass (no cache, as #1512 did). One generator, seeded
once on `device`, draws every random number in batch order, so the sequences are a function of the seed (and of
the device's kernels). Returns a list of (1, seq_len) int64 tensors on the CPU. `collect` generates them and
sums each rank's share into the Hessians.
"""

import time

import torch

from . import dist as pgdist
from .hessians import HessianConfig, HessianSums
from .model import GPT


@torch.no_grad()
def generate(
    model: GPT, num_seqs: int, seq_len: int, temperature: float, batch: int, seed: int, device
) -> list[torch.Tensor]:
    model.eval()
    rng = torch.Generator(device=device)
    rng.manual_seed(seed)
    vocab = model.config.vocab_size
    out = []
    for first in range(0, num_seqs, batch):
        tokens = torch.randint(0, vocab, (min(batch, num_seqs - first), 1), device=device, generator=rng)
        for _ in range(seq_len - 1):
            probs = torch.softmax(model(tokens)[:, -1].float() / temperature, dim=-1)
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=rng)], dim=1)
        out.extend(row[None].cpu() for row in tokens)
    return out


@torch.no_grad()
def collect(model: GPT, config: HessianConfig, seed: int, dist: pgdist.Dist) -> tuple[HessianSums, float]:
    """#1512's calibration: every rank generates all sequences (one RNG stream), then hooks its share (sequence i
    on rank i mod world); returns the sums and the loop seconds, generation included."""
    model.looping = True  # the trained model's final state writes the sequences
    pgdist.sync(dist.device)
    start = time.perf_counter()
    seqs = generate(
        model, config.self_seqs, config.seq_len, config.self_temperature, config.self_batch, seed, dist.device
    )
    sums = HessianSums()
    for seq in seqs[dist.rank :: dist.world]:
        model(seq[:, :-1].to(dist.device), capture=sums)
    pgdist.sync(dist.device)
    return sums, time.perf_counter() - start
