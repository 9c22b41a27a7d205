"""GPTQ + SDClip, AWQ-lite protected groups and LQER factors, against slow references and round-to-nearest."""

import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.quant import dequantize, gptq_quantize, lqer
from pgolf.quant.awq import apply_awq_groups, gptq_quantize_protected, group_scores, select_groups


def correlated_problem(rows=48, cols=96, n=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    X = torch.randn(n, cols, generator=g) @ mix * torch.linspace(0.2, 3.0, cols)
    W = torch.randn(rows, cols, generator=g) * 0.05
    return W, X.T @ X


def h_error(W, W_hat, H):
    E = (W - W_hat).double()
    return float(((E @ H.double()) * E).sum())


def slow_gptq(W, H, scale, limit, damp):
    """Optimal Brain Quantization one column at a time in act-order, with an explicit inverse (float64)."""
    W, H = W.double().clone(), H.double().clone()
    H += damp * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    s = scale.double()
    order = torch.argsort(H.diagonal(), descending=True).tolist()
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    remaining = list(order)
    for j in order:
        q = torch.clamp(torch.round(W[:, j] / s), -limit, limit)
        Q[:, j] = q
        err = (W[:, j] - q * s) / Hinv[j, j]
        W -= err.unsqueeze(1) * Hinv[j].unsqueeze(0)
        Hinv -= Hinv[:, j : j + 1] @ Hinv[j : j + 1, :] / Hinv[j, j]
        remaining.remove(j)
    return Q


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bits,clip", [(6, 13.0), (7, 14.0), (4, 3.0)])
def test_gptq_beats_round_to_nearest_with_the_same_scales(seed, bits, clip):
    W, H = correlated_problem(seed=seed)
    q, scale = gptq_quantize(W, H, bits, clip, block_size=32)
    limit = 2 ** (bits - 1) - 1
    rtn = torch.clamp(torch.round(W / scale.float().unsqueeze(1)), -limit, limit)
    assert h_error(W, dequantize(q, scale), H) < 0.9 * h_error(W, dequantize(rtn, scale), H)


@pytest.mark.parametrize("bits,clip", [(6, 13.0), (7, 14.0), (6, 2.0)])
def test_codes_and_scales_follow_sdclip(bits, clip):
    W, H = correlated_problem(seed=3)
    q, scale = gptq_quantize(W, H, bits, clip)
    limit = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and q.shape == W.shape
    assert scale.dtype == torch.float16 and scale.shape == (W.shape[0],)
    assert int(q.min()) >= -limit and int(q.max()) <= limit
    torch.testing.assert_close(scale, (clip * W.std(dim=1) / limit).half())
    if clip == 2.0:  # a tight clip must actually hit both ends of the range
        assert int(q.min()) == -limit and int(q.max()) == limit


def test_blocked_gptq_matches_the_column_by_column_reference():
    W, H = correlated_problem(rows=32, cols=64, seed=4)
    q, scale = gptq_quantize(W, H, 6, 13.0, block_size=16, damp=0.01)
    ref = slow_gptq(W, H, scale.float(), 31, damp=0.01)
    agree = (q.double() == ref).double().mean().item()
    assert agree > 0.99
    assert h_error(W, dequantize(q, scale), H) == pytest.approx(h_error(W, ref * scale.double()[:, None], H), rel=0.02)


def test_block_size_does_not_change_the_result():
    W, H = correlated_problem(rows=16, cols=64, seed=5)
    q_small, _ = gptq_quantize(W, H, 6, 13.0, block_size=8)
    q_whole, _ = gptq_quantize(W, H, 6, 13.0, block_size=64)
    assert (q_small == q_whole).double().mean().item() > 0.99


def test_dead_columns_are_zeroed():
    W, H = correlated_problem(rows=8, cols=32, seed=6)
    H[5, :] = 0
    H[:, 5] = 0
    q, _ = gptq_quantize(W, H, 6, 13.0)
    assert torch.all(q[:, 5] == 0)
    assert q[:, 4].abs().sum() > 0


def test_singular_hessian_without_damping_is_a_clear_error():
    W, _ = correlated_problem(rows=4, cols=16, seed=7)
    H = torch.ones(16, 16)
    H[0, 0] = -5.0
    with pytest.raises(PgolfError, match="gptq.damp"):
        gptq_quantize(W, H, 6, 13.0, damp=0.0)


def test_awq_group_is_stored_at_int8_and_dequantizes():
    W, H = correlated_problem(rows=32, cols=128, seed=8)
    groups = [(64, 32)]
    q, scale, scale_hi = gptq_quantize_protected(W, H, 6, 13.0, groups, block_size=32)
    inside, outside = q[:, 64:96], torch.cat([q[:, :64], q[:, 96:]], dim=1)
    assert q.dtype == torch.int8 and int(outside.abs().max()) <= 31
    plain_q, _ = gptq_quantize(W, H, 6, 13.0, block_size=32)
    # same clip sigmas, 127 instead of 31 steps: codes about 4x larger, within int8
    assert inside.float().abs().mean() > 3.5 * plain_q[:, 64:96].float().abs().mean()
    assert int(inside.abs().max()) <= 127
    torch.testing.assert_close(scale_hi, (13.0 * W.std(dim=1) / 127).half())
    W_hat = apply_awq_groups(dequantize(q, scale), q, torch.tensor([64]), torch.tensor([32]), scale_hi)
    torch.testing.assert_close(W_hat[:, 64:96], q[:, 64:96].float() * scale_hi.float()[:, None])
    torch.testing.assert_close(W_hat[:, :64], q[:, :64].float() * scale.float()[:, None])
    assert h_error(W, W_hat, H) < h_error(W, dequantize(plain_q, scale), H)


def test_awq_picks_the_most_salient_groups_across_tensors():
    W_a = torch.full((4, 8), 0.1)
    W_b = torch.full((4, 6), 0.1)
    W_b[:, 4:] = 2.0  # the last, shorter group of b is the most salient
    rms = {"a": torch.ones(8), "b": torch.ones(6)}
    rms["a"][0:4] = 3.0
    assert [(s, n) for s, n, _ in group_scores(W_b, rms["b"], 4)] == [(0, 4), (4, 2)]
    picks = select_groups({"a": W_a, "b": W_b}, rms, top_k=2, group=4)
    assert [(p["name"], p["start"], p["size"]) for p in picks] == [("b", 4, 2), ("a", 0, 4)]
    assert picks[0]["score"] == pytest.approx(2 * 2.0)


@pytest.mark.parametrize("asym,group,mode", [(True, 32, lqer.ASYM), (True, 48, lqer.SYM), (False, 32, lqer.SYM)])
def test_lqer_factors_lower_a_low_rank_error(asym, group, mode):
    g = torch.Generator().manual_seed(9)
    E = torch.randn(64, 4, generator=g) @ torch.randn(4, 128, generator=g) + 0.01 * torch.randn(64, 128, generator=g)
    got_mode, factors = lqer.fit(E, rank=4, group=group, asym=asym)
    assert got_mode == mode
    a, a_scale, b, b_scale = (factors[s] for s in lqer.SUFFIXES[mode])
    assert a.dtype == b.dtype == torch.int8 and a.shape == (64, 4) and b.shape == (4, 128)
    assert a_scale.dtype == b_scale.dtype == torch.float16
    if mode == lqer.ASYM:
        assert int(a.min()) >= -2 and int(a.max()) <= 1 and a_scale.numel() == 1
        assert int(b.min()) >= -8 and int(b.max()) <= 7 and b_scale.numel() == 128 * 4 // group
    else:
        assert int(a.abs().max()) <= 7 and int(b.abs().max()) <= 7
    assert (E - lqer.correction(mode, factors)).norm() < 0.6 * E.norm()


def test_lqer_rank_is_capped_by_the_matrix():
    E = torch.randn(3, 64)
    _, factors = lqer.fit(E, rank=8, group=64, asym=True)
    assert factors["lqA_a"].shape == (3, 3) and factors["lqB_a"].shape == (3, 64)


def test_percentile_clip_search_keeps_the_lowest_mse_candidate():
    # #1512's search: one GPTQ pass per row-clip quantile; the returned codes are the candidate with the lowest MSE
    from pgolf.quant.gptq import gptq_codes
    from pgolf.quant.percentile_clip import gptq_quantize_percentile, percentile_scale

    g = torch.Generator().manual_seed(11)
    W = torch.randn(12, 40, generator=g)
    W[3, 5] = 9.0  # an outlier that a lower clip trades away
    X = torch.randn(200, 40, generator=g)
    H = X.T @ X
    percentiles = [0.99, 0.999, 1.0]
    q, scale = gptq_quantize_percentile(W, H, 6, percentiles, block_size=16)
    errors = []
    for p in percentiles:
        s = percentile_scale(W, p, 31)
        codes = gptq_codes(W, H, s, 31, 16, 0.01)
        errors.append(float((W - codes.float() * s.float()[:, None]).pow(2).mean()))
    best = percentiles[errors.index(min(errors))]
    assert torch.equal(scale, percentile_scale(W, best, 31)) and q.abs().max() <= 31
    row = W[0].abs()
    assert percentile_scale(W, 1.0, 31)[0].item() == pytest.approx(max(row.max().item() / 31, 1 / 31), rel=1e-3)
    assert percentile_scale(W, 0.99, 31)[0].item() == pytest.approx(
        max(torch.quantile(row, 0.99).item() / 31, 1 / 31), rel=1e-3
    )
