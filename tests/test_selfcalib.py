"""#1512's self-generated GPTQ calibration (pgolf.selfcalib, hessians.source: self): deterministic under a seed,
sampled as a slow reference samples, and the Hessians are the sums over those sequences.

    pytest tests/test_selfcalib.py
"""

import torch

from pgolf import dist as pgdist
from pgolf.hessians import HessianConfig, HessianSums
from pgolf.model import GPT, ModelConfig
from pgolf.selfcalib import collect, generate

TINY = dict(
    vocab_size=32,
    num_layers=2,
    xsa_last_n=2,
    model_dim=16,
    num_heads=2,
    num_kv_heads=1,
    mlp_mult=2.0,
    rope_dims=4,
    num_loops=0,
    parallel_start_layer=None,
    sparse_attn_gate=False,
    smear_gate=False,
    smear_per_dim=True,
    skip_gates=False,
    bigram_buckets=16,
    bigram_dim=4,
)


def tiny_model():
    torch.manual_seed(0)
    model = GPT(ModelConfig(**TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def test_generation_is_deterministic_under_a_seed():
    model = tiny_model()
    a = generate(model, 5, 9, 0.8, 2, seed=42, device="cpu")
    b = generate(model, 5, 9, 0.8, 2, seed=42, device="cpu")
    c = generate(model, 5, 9, 0.8, 2, seed=43, device="cpu")
    assert len(a) == 5 and all(s.shape == (1, 9) and s.dtype == torch.int64 for s in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_generation_matches_a_token_by_token_reference():
    model = tiny_model().eval()
    got = generate(model, 3, 6, 0.8, 2, seed=7, device="cpu")
    rng = torch.Generator().manual_seed(7)
    want = []
    for size in (2, 1):  # batches of 2, then the remainder
        rows = torch.randint(0, 32, (size, 1), generator=rng)
        for _ in range(5):
            logits = model(rows)[:, -1]
            nxt = torch.multinomial(torch.softmax(logits / 0.8, dim=-1), 1, generator=rng)
            rows = torch.cat([rows, nxt], 1)
        want.extend(rows[i : i + 1] for i in range(size))
    assert all(torch.equal(x, y) for x, y in zip(got, want))


def test_self_hessians_sum_over_the_generated_sequences():
    model = tiny_model()
    cfg = HessianConfig(source="self", seq_len=7, self_seqs=3, self_batch=2)
    dist = pgdist.init(0)
    try:
        sums, seconds = collect(model, cfg, seed=5, dist=dist)
    finally:
        pgdist.shutdown()
    H = sums.result(cfg.self_seqs)
    ref = HessianSums()
    for seq in generate(model, 3, 7, 0.8, 2, seed=5, device="cpu"):
        model(seq[:, :-1], capture=ref)
    want = ref.result(3)
    assert seconds > 0 and set(H) == set(want)
    for name in want:
        if name != "act_rms":
            assert torch.allclose(H[name], want[name], atol=1e-5), name
