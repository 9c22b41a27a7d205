"""LQER_ADAPTIVE (#1935): a rank per tensor under a byte budget, instead of pgolf.quant.lqer's top-k tensors at one
rank. pgolf.quant.state imports this module only where the preset's `lqer.adaptive` is on, so a script whose preset
turns it off (the record's) leaves it out (pgolf.codepack.OPTIONAL).
"""

import torch


def asym_bytes(rows: int, cols: int, rank: int, group: int) -> int:
    """Bytes #1935's adaptive allocator charges a rank-r asymmetric correction: A int2 plus one fp16 scale,
    B int4 plus one fp16 scale per group (the formula holds even where the tensor falls back to sym packing)."""
    return rows * rank * 2 // 8 + 2 + rank * cols * 4 // 8 + (rank * cols // group) * 2


def adaptive_ranks(errors: dict, ranks: list[int], budget_bytes: int, group: int) -> dict[str, int]:
    """{tensor: rank} under `budget_bytes`. Every (tensor, candidate rank) is an option worth its marginal SVD energy
    over the tensor's previous candidate rank per marginal byte. Options are visited best first (ties in `errors`
    order); a tensor not yet chosen takes the option's rank if its full cost fits the remaining budget, a chosen one
    moves up to it if the extra cost fits.
    """
    ranks = sorted({int(r) for r in ranks})
    options = []
    for name, E in errors.items():
        S = torch.linalg.svd(E.float(), full_matrices=False)[1]  # #1935 ranks by these singular values
        rows, cols = E.shape
        prev_energy, prev_cost = 0.0, 0
        for r in ranks:
            rr = min(r, S.numel())
            energy = float((S[:rr] ** 2).sum())
            cost = asym_bytes(rows, cols, rr, group)
            options.append(((energy - prev_energy) / max(cost - prev_cost, 1), name, rr, cost))
            prev_energy, prev_cost = energy, cost
    options.sort(key=lambda o: -o[0])  # stable: equal gains keep tensor, then rank, order
    chosen, remaining = {}, budget_bytes
    for _, name, r, cost in options:
        if name in chosen:
            cur_r, cur_cost = chosen[name]
            if r > cur_r and cost - cur_cost <= remaining:
                chosen[name], remaining = (r, cost), remaining - (cost - cur_cost)
        elif cost <= remaining:
            chosen[name], remaining = (r, cost), remaining - cost
    return {name: r for name, (r, _) in chosen.items()}
