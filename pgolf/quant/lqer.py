"""LQER (docs/record-stack.md §6.1): a low-rank correction Â·B̂ of a quantized tensor's error E = W − Ŵ.

E ≈ A·B from the rank-r SVD (A = U_r·diag(S_r), B = V_rᵀ). Asymmetric packing: A in int2 [-2, 1] with one fp16 scale
max|A|/1.5, B in int4 [-8, 7] in groups of g over the flattened B with fp16 scales max|group|/7.5. When B's size is
not a multiple of g (or asym is off), both factors are int4 [-7, 7] with one fp16 scale per row.
"""

import torch

from .gptq import MIN_SCALE

ASYM = "lqer_asym"
SYM = "lqer_sym"
SUFFIXES = {ASYM: ("lqA_a", "lqAs_a", "lqB_a", "lqBs_a"), SYM: ("lqA", "lqAs", "lqB", "lqBs")}
SYM_FACTOR_RANGE = 7  # LQER_FACTOR_BITS = 4


def low_rank_factors(E: torch.Tensor, rank: int):
    U, S, Vh = torch.linalg.svd(E.float(), full_matrices=False)
    r = min(rank, S.numel())
    return U[:, :r] * S[:r], Vh[:r]


def _codes(x, scale, low, high):
    return torch.clamp(torch.round(x / scale.float()), low, high).to(torch.int8)


def _fp16_scale(x):
    return x.clamp_min(MIN_SCALE).to(torch.float16)


def fit(E: torch.Tensor, rank: int, group: int, asym: bool) -> tuple[str, dict]:
    """Quantized factors of E's rank-r approximation: (mode, {suffix: tensor})."""
    A, B = low_rank_factors(E, rank)
    mode = ASYM if asym and B.numel() % group == 0 else SYM
    if mode == ASYM:
        sA = _fp16_scale(A.abs().max() / 1.5).reshape(1)
        qA = _codes(A, sA, -2, 1)
        groups = B.reshape(-1, group)
        sB = _fp16_scale(groups.abs().amax(dim=1) / 7.5)
        qB = _codes(groups, sB.unsqueeze(1), -8, 7).reshape(B.shape)
    else:
        lim = SYM_FACTOR_RANGE
        sA = _fp16_scale(A.abs().amax(dim=1) / lim)
        qA = _codes(A, sA.unsqueeze(1), -lim, lim)
        sB = _fp16_scale(B.abs().amax(dim=1) / lim)
        qB = _codes(B, sB.unsqueeze(1), -lim, lim)
    return mode, dict(zip(SUFFIXES[mode], (qA, sA, qB, sB)))


def correction(mode: str, factors: dict) -> torch.Tensor:
    """Â·B̂ (rows, cols) in fp32 from the stored factors."""
    a, a_scale, b, b_scale = (factors[s] for s in SUFFIXES[mode])
    if mode == ASYM:
        A = a.float() * a_scale.float()
        n_groups = b_scale.numel()
        B = (b.float().reshape(n_groups, -1) * b_scale.float().unsqueeze(1)).reshape(b.shape)
    else:
        A = a.float() * a_scale.float().unsqueeze(1)
        B = b.float() * b_scale.float().unsqueeze(1)
    return A @ B
