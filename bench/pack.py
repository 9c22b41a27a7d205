"""Pack benchmark on a synthetic record-shaped quantized state: seconds, bytes per stream, vs brotli-only.

    python bench/pack.py [--layers 11] [--vocab 8192] [--seed 0]

The state has the shapes of #1855 (docs/record-stack.md §3.1: vocab 8192, d 512, 11 layers, GQA 8/4 heads, MLP 2048)
and the record's SDClip settings (§5.2: attention int6 k=13.0, MLP int6 k=11.5, embedding int7 k=14.0). Weights
are built to carry the statistics that matter to the compressors, not trained:
  - every matrix: a rank-16 component (a quarter of the variance) plus Student-t (df 4) noise, so values have
    heavy tails and rows are correlated; per-row scale varies log-normally (sigma 0.3);
  - the embedding: 256 cluster centres plus Student-t noise per row (tokens come in families of similar rows);
  - SDClip per row: s = k * std(row) / (2^(bits-1) - 1), q = clamp(round(w / s)), no GPTQ error feedback;
  - the remainder as quantize writes it: fp16 per-row scales, the fp16 control tensors, int8 attention gates,
    LQER asym factors for the top-3 tensors (tok_emb and two mlp.fc: INT2 A, INT4 B, group 64), meta strings.
Real trained weights differ (the lead measures those on the GPU box); this shows the machinery's speed and the
size of each stream at record scale.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgolf import pack as P  # noqa: E402

DIM, HEADS, KV_HEADS, HIDDEN = 512, 8, 4, 2048
ROLES = {  # name: (rows, cols, bits, clip sigmas)
    "attn.c_q": (DIM, DIM, 6, 13.0),
    "attn.c_k": (DIM * KV_HEADS // HEADS, DIM, 6, 13.0),
    "attn.c_v": (DIM * KV_HEADS // HEADS, DIM, 6, 13.0),
    "attn.proj": (DIM, DIM, 6, 13.0),
    "mlp.fc": (HIDDEN, DIM, 6, 11.5),
    "mlp.proj": (DIM, HIDDEN, 6, 11.5),
}


def heavy_tailed(gen, rows, cols):
    noise = torch.distributions.StudentT(4.0).sample((rows, cols))
    low_rank = torch.randn(rows, 16, generator=gen) @ torch.randn(16, cols, generator=gen) / 4.0
    w = low_rank * (0.25 / low_rank.var()).sqrt() + noise * (0.75 / noise.var()).sqrt()
    return w * torch.exp(0.3 * torch.randn(rows, 1, generator=gen)) * 0.02


def sdclip(w, bits, sigmas):
    clip = 2 ** (bits - 1) - 1
    scale = sigmas * w.std(dim=1, keepdim=True) / clip
    return torch.clamp(torch.round(w / scale), -clip, clip).to(torch.int8), scale.squeeze(1).half()


def lqer_asym(gen, rows, cols, rank=4, group=64):
    b = torch.randint(-8, 8, (rank, cols), generator=gen).to(torch.int8)
    return {
        "lqA_a": torch.randint(-2, 2, (rows, rank), generator=gen).to(torch.int8),
        "lqAs_a": torch.rand(1).half()[0],
        "lqB_a": b,
        "lqBs_a": torch.rand(b.numel() // group).half(),
    }


def synthetic_state(layers, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tensors, meta = {}, {}
    centres = heavy_tailed(gen, 256, DIM)
    emb = centres[torch.randint(0, 256, (vocab,), generator=gen)] + 0.7 * heavy_tailed(gen, vocab, DIM)
    tensors["tok_emb.weight.q"], tensors["tok_emb.weight.scale"] = sdclip(emb, 7, 14.0)
    meta["tok_emb.weight"] = "gptq (int7)+lqer_asym"
    lqer = [("tok_emb.weight", vocab, DIM)] + [(f"blocks.{i}.mlp.fc.weight", HIDDEN, DIM) for i in (0, 1)]
    for i in range(layers):
        for role, (rows, cols, bits, sigmas) in ROLES.items():
            name = f"blocks.{i}.{role}.weight"
            tensors[f"{name}.q"], tensors[f"{name}.scale"] = sdclip(heavy_tailed(gen, rows, cols), bits, sigmas)
            meta[name] = f"gptq (int{bits})"
        gate = torch.randn(HEADS, 12, generator=gen)
        tensors[f"blocks.{i}.attn.attn_gate_w.q"] = torch.round(gate / gate.abs().max() * 127).to(torch.int8)
        tensors[f"blocks.{i}.attn.attn_gate_w.scale"] = torch.rand(HEADS).half()
        meta[f"blocks.{i}.attn.attn_gate_w"] = "int8 per row"
        for small, shape in {
            "attn.q_gain": (HEADS,),
            "attn_scale": (DIM,),
            "mlp_scale": (DIM,),
            "resid_mix": (2, DIM),
            "parallel_post_lambdas": (2, 2),
            "parallel_resid_lambdas": (2,),
        }.items():
            tensors[f"blocks.{i}.{small}"] = torch.randn(shape, generator=gen).half()
            meta[f"blocks.{i}.{small}"] = "passthrough (float16)"
    top_level = {"skip_weights": (8, DIM), "skip_gates": (8, DIM), "smear_gate": (12,), "smear_lambda": (1,)}
    for small, shape in top_level.items():
        tensors[small] = torch.randn(shape, generator=gen).half()
        meta[small] = "passthrough (float16)"
    for name, rows, cols in lqer[: 1 + min(2, layers)]:
        for suffix, t in lqer_asym(gen, rows, cols).items():
            tensors[f"{name}.{suffix}"] = t
        meta[name] = meta[name].split("+")[0] + "+lqer_asym"
    config = {
        "vocab_size": vocab,
        "num_layers": layers,
        "model_dim": DIM,
        "num_heads": HEADS,
        "num_kv_heads": KV_HEADS,
        "mlp_mult": 4.0,
        "tie_embeddings": True,
    }
    return {"tensors": tensors, "meta": meta, "config": config}


def main():
    parser = argparse.ArgumentParser(description="Benchmark pgolf.pack on a synthetic record-shaped state.")
    parser.add_argument("--layers", type=int, default=11)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    state = synthetic_state(args.layers, args.vocab, args.seed)
    raw = sum(t.numel() * t.element_size() for t in state["tensors"].values())

    start = time.perf_counter()
    data = P.pack(state)
    pack_s = time.perf_counter() - start
    start = time.perf_counter()
    back = P.unpack(data)
    unpack_s = time.perf_counter() - start
    assert all(torch.equal(back["tensors"][k], v) for k, v in state["tensors"].items())
    start = time.perf_counter()
    baseline = P.brotli_baseline_bytes(state)
    baseline_s = time.perf_counter() - start

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"cores {P.cores()}  nn-chain device {device}  torch threads {torch.get_num_threads()}  "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'stream':<12}{'bytes':>12}")
    for name, size in P.stream_sizes(data).items():
        print(f"{name:<12}{size:>12,}")
    print(f"{'PGRP total':<12}{len(data):>12,}   pack {pack_s:.1f} s, unpack {unpack_s:.1f} s (raw state {raw:,} B)")
    print(f"{'brotli-only':<12}{baseline:>12,}   torch.save + brotli q11 lgwin 24, {baseline_s:.1f} s")
    saved = baseline - len(data)
    print(f"{'saved':<12}{saved:>12,}   ({saved / 1e3:.0f} KB below brotli-only)")


if __name__ == "__main__":
    main()
