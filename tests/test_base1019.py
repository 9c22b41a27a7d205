"""#1512 and its #1019 base as model options (pgolf.qat, pgolf.pko, pgolf.embeds and their ModelConfig keys),
each against a slow reference written out element by element.

    pytest tests/test_base1019.py
"""

import math

import pytest
import torch
import yaml

from pgolf.embeds import bigram_hash, smear_per_dim
from pgolf.errors import PgolfError
from pgolf.model import GPT, ModelConfig, Rotary
from pgolf.optim import EMA
from pgolf.pko import partial_key_offset
from pgolf.qat import fake_quant_int6
from pgolf.shards import BOS_ID

from conftest import ROOT

TINY_1019 = dict(
    vocab_size=64,
    num_layers=4,
    xsa_last_n=4,
    model_dim=32,
    num_heads=4,
    num_kv_heads=2,
    mlp_mult=3.0,
    rope_dims=4,
    qk_gain_init=2.5,
    smear_gate=False,
    smear_per_dim=True,
    sparse_attn_gate=False,
    num_loops=0,
    parallel_start_layer=None,
    skip_gates=False,
    bigram_buckets=48,
    bigram_dim=8,
    value_embed_layers=[2, 3],
    value_embed_dim=8,
    partial_key_offset=True,
    attn_window=4,
    attn_window_layers=[0, 1],
    rope_train_len=8,
)


def recipe_model_config() -> ModelConfig:
    """config.yaml's model section with recipes/pr1512.yaml's over it (Snakemake's merge of mappings)."""
    model = yaml.safe_load((ROOT / "config.yaml").read_text())["model"]
    model.update(yaml.safe_load((ROOT / "recipes" / "pr1512.yaml").read_text())["model"])
    return ModelConfig.from_dict(model)


def test_recipe_model_has_the_logs_parameter_count():
    model = GPT(recipe_model_config())
    assert sum(p.numel() for p in model.parameters()) == 27_067_484  # swa_run_s42.log: model_params:27067484
    windowed = [i for i, b in enumerate(model.blocks) if b.attn.window == 256]
    assert windowed == [0, 1, 2, 3, 4, 5]
    assert [i for i, b in enumerate(model.blocks) if b.attn.key_offset] == [6, 7, 8, 9, 10]


@pytest.mark.parametrize("low", [-31, -32])
def test_fake_quant_levels_match_a_per_row_loop(low):
    torch.manual_seed(0)
    w = torch.randn(2, 5, 7) * torch.tensor([1e-3, 1.0, 3.0, 0.02, 10.0])[None, :, None]
    w[0, 0, :] = 0.0
    got = fake_quant_int6(w, low)
    for bank in range(2):
        for r in range(5):
            row = w[bank, r].tolist()
            scale = max(max(abs(x) for x in row) / 31, 1 / 31)
            for c, x in enumerate(row):
                level = min(max(round(x / scale), low), 31)
                assert got[bank, r, c].item() == pytest.approx(level * scale, rel=1e-6, abs=1e-7)
    levels = got / (w.abs().amax(-1, keepdim=True) / 31).clamp_min(1 / 31)
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.round().min() >= low and levels.round().max() <= 31


def test_fake_quant_gradient_is_straight_through():
    w = torch.randn(6, 9, requires_grad=True)
    upstream = torch.randn(6, 9)
    (fake_quant_int6(w) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)


def test_linear_layers_lower_clamp_never_binds():
    # #1512 clamps its CastedLinear layers at -32 and its banks at -31; with the absmax scale (at least 1/31)
    # no value reaches below -31, so both give the same weights
    torch.manual_seed(5)
    w = torch.cat([torch.randn(50, 16) * 3, torch.rand(50, 16) * -0.9])
    assert torch.equal(fake_quant_int6(w, -32), fake_quant_int6(w, -31))


def test_model_qat_equals_the_model_on_quantized_banks():
    torch.manual_seed(1)
    cfg = ModelConfig(**TINY_1019)
    model = perturbed(cfg).train()
    ids = torch.randint(2, 64, (2, 12))
    model.qat = True
    loss = model(ids, ids)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    ref = GPT(cfg).train()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name in ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank"):
            getattr(ref, name).copy_(fake_quant_int6(getattr(ref, name)))
        for name in ("bigram.proj.weight", "value_embed.proj.weight"):
            ref.get_parameter(name).copy_(fake_quant_int6(ref.get_parameter(name), -32))
    ref_loss = ref(ids, ids)
    ref_loss.backward()
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    for name, p in ref.named_parameters():  # straight through: the gradient at the quantized point
        assert torch.allclose(grads[name], p.grad, atol=1e-6), name
    model.eval()
    assert not torch.allclose(model(ids, ids), ref(ids, ids))  # eval forwards use the real weights


def test_partial_key_offset_matches_a_loop():
    torch.manual_seed(2)
    k = torch.randn(2, 6, 3, 8)
    keep = torch.zeros(2, 6, dtype=torch.bool)
    keep[1, 3] = True
    got = partial_key_offset(k, 4, keep)
    for b in range(2):
        for t in range(6):
            src = t if t == 0 or keep[b, t] else t - 1
            assert torch.equal(got[b, t, :, :4], k[b, t, :, :4])
            assert torch.equal(got[b, t, :, 4:], k[b, src, :, 4:])
    assert torch.equal(partial_key_offset(k, 8)[:, 1:, :, 4:], k[:, :-1, :, 4:])  # full RoPE: half the head


def test_bigram_hash_matches_python_ints():
    ids = torch.tensor([[5, 1023, 0, 77, 77, 1], [1, 2, 3, 4, 5, 6]])
    got = bigram_hash(ids, 3072)
    for b in range(2):
        row = ids[b].tolist()
        want = [3071] + [((36313 * row[i]) ^ (27191 * row[i - 1])) % 3071 for i in range(1, 6)]
        assert got[b].tolist() == want


def test_bigram_embedding_lookup_and_init():
    model = GPT(ModelConfig(**TINY_1019))
    scale = model.bigram.scale.item()  # bf16-rounded at build, as upstream's GPT(...).bfloat16()
    assert torch.count_nonzero(model.bigram.embed.weight) == 0 and scale == torch.tensor(0.05).bfloat16().item()
    w = model.bigram.proj.weight  # orthogonal (8 orthonormal columns), then bf16-rounded
    assert torch.allclose(w.T @ w, torch.eye(8), atol=2e-2)
    with torch.no_grad():
        model.bigram.embed.weight.normal_()
    ids = torch.randint(0, 64, (1, 7))
    got = model.bigram(ids, torch.float32)
    rows = bigram_hash(ids, 48)[0]
    for t in range(7):
        want = scale * (w @ model.bigram.embed.weight[rows[t]])
        assert torch.allclose(got[0, t], want, atol=1e-6)


def test_smear_per_dim_matches_a_loop():
    torch.manual_seed(3)
    x, gate = torch.randn(2, 5, 4), torch.randn(4)
    starts = torch.zeros(2, 5, dtype=torch.bool)
    starts[0, 2] = True
    got = smear_per_dim(x, gate, starts)
    s = torch.sigmoid(gate)
    for b in range(2):
        for t in range(5):
            prev = torch.zeros(4) if t == 0 or starts[b, t] else x[b, t - 1]
            assert torch.allclose(got[b, t], (1 - s) * x[b, t] + s * prev)


def test_rotary_base_grows_past_the_train_length():
    rot = Rotary(16, 10000.0, train_len=1024)
    cos, _ = rot(4096, "cpu", torch.float64)
    base = 10000.0 * 4 ** (16 / 14)
    t, j = 4095, 3
    assert cos[0, t, 0, j].item() == pytest.approx(math.cos(t * base ** (-2 * j / 16)), abs=1e-5)
    short, _ = rot(1024, "cpu", torch.float32)
    plain, _ = Rotary(16, 10000.0)(1024, "cpu", torch.float32)
    assert torch.equal(short, plain)


def perturbed(cfg: ModelConfig) -> GPT:
    """A model whose zero-initialized outputs (O, MLP down) are not zero, so every path reaches the logits."""
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_value_embedding_reaches_only_its_layers():
    torch.manual_seed(4)
    model = perturbed(ModelConfig(**TINY_1019)).eval()
    ids = torch.randint(2, 64, (1, 9))
    base = model(ids)
    with torch.no_grad():
        model.value_embed_scales.zero_()
    assert not torch.allclose(model(ids), base)  # it contributes ...
    with torch.no_grad():
        model.value_embed_scales.fill_(1.0)
        model.value_embed.proj.weight.zero_()
    zero_ve = model(ids)
    cfg = dict(TINY_1019, value_embed_layers=None)
    plain = GPT(ModelConfig(**cfg)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "value_embed" not in k})
    assert torch.allclose(zero_ve, plain(ids), atol=1e-6)  # ... and nothing else differs


def test_ungated_skip_is_a_plain_sum():
    cfg = ModelConfig(**TINY_1019)
    model = GPT(cfg)
    assert not hasattr(model, "skip_gates") and not hasattr(model, "parallel_post_lambdas")
    x, skip = torch.randn(3, 32), torch.randn(3, 32)
    assert torch.equal(model._skip(0, x, skip), x + skip)


def test_bad_1019_keys_are_named():
    with pytest.raises(PgolfError, match="smear_per_dim"):
        ModelConfig(smear_per_dim=True)  # the record's smear_gate is on
    with pytest.raises(PgolfError, match="value_embed_layers"):
        ModelConfig(value_embed_layers=[11])
    with pytest.raises(PgolfError, match="bigram_buckets"):
        ModelConfig(bigram_buckets=3072, bigram_dim=0)
    # the window's and the RoPE length's checks (pgolf.sliding_window, pgolf.rope_scaling)
    with pytest.raises(PgolfError, match="model.attn_window: must be a positive"):
        ModelConfig(attn_window=0)
    with pytest.raises(PgolfError, match="model.attn_window_layers: layer indices must be in 0..10"):
        ModelConfig(attn_window=256, attn_window_layers=[11])
    layers = ModelConfig(attn_window=256, attn_window_layers=[1.0, 5]).attn_window_layers
    assert layers == [1, 5] and all(type(i) is int for i in layers)
    with pytest.raises(PgolfError, match="model.rope_train_len"):
        ModelConfig(rope_train_len=0)
    with pytest.raises(PgolfError, match="model.rope_train_len"):
        ModelConfig(rope_train_len=1024, rope_dims=2)


def test_ema_matches_the_recurrence():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], 0.997)
    want = torch.zeros(3, dtype=torch.float64)
    for step in range(5):
        with torch.no_grad():
            p.add_(torch.tensor([1.0, -2.0, 0.5]) * (step + 1))
        ema.update()
        want = 0.997 * want + 0.003 * p.detach().double()
    assert torch.allclose(ema.shadow[0].double(), want, atol=1e-7)
    ema.copy_to_params()
    assert torch.allclose(p.detach().double(), want, atol=1e-7)


def test_wallclock_warmdown_is_1512s_lr_mul():
    from pgolf.train import TrainConfig, lr_schedule

    def upstream(step, elapsed_ms, warmdown_iters=4000, max_ms=600_000.0):  # train_gpt_swa.py lr_mul, time branch
        step_ms = elapsed_ms / max(step, 1)
        warmdown_ms = warmdown_iters * step_ms
        remaining_ms = max(max_ms - elapsed_ms, 0.0)
        return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0

    cfg = TrainConfig(warmdown_steps=4000, min_lr=0.0, hessian_reserve_seconds=0.0)
    for step, elapsed in [(1, 0.08), (3000, 245.0), (3400, 278.0), (5000, 408.3), (7349, 600.1)]:
        assert lr_schedule(cfg, step, elapsed) == pytest.approx(upstream(step, 1000 * elapsed), abs=1e-9)
    steps = TrainConfig(schedule="steps", steps=60, warmdown_steps=40, min_lr=0.0)
    assert [lr_schedule(steps, s, 0.0) for s in (0, 20, 21, 55, 59)] == pytest.approx([1, 1, 39 / 40, 5 / 40, 1 / 40])
    record = TrainConfig()
    assert lr_schedule(record, 10, 599.0) == pytest.approx(max((1 - 599 / 599.5) / 0.85, 0.1))


def test_cross_document_smear_and_key_offset_restart_per_segment():
    # #1512's rows and windows run across documents: the per-dimension smear and the key offset carry over a BOS
    # and restart only where attention does (each max_seqlen piece); isolated documents stop at every BOS.
    cfg = ModelConfig(**dict(TINY_1019, cross_document=True))
    ids = torch.randint(2, 64, (1, 8))
    ids[0, 3] = BOS_ID
    model = GPT(cfg)
    stops = model._carry_stops(ids, model.layout(ids, max_seqlen=4))
    assert stops.tolist() == [[True, False, False, False, True, False, False, False]]
    isolated = GPT(ModelConfig(**TINY_1019))
    assert torch.equal(isolated._carry_stops(ids, isolated.layout(ids)), ids == BOS_ID)

    torch.manual_seed(5)
    model = perturbed(cfg).eval()
    changed = ids.clone()
    changed[0, 2] = 2 + (int(ids[0, 2]) - 1) % 62  # another token before the BOS
    whole, whole_changed = model.hidden(ids, max_seqlen=8), model.hidden(changed, max_seqlen=8)
    assert not torch.allclose(whole[0, 3], whole_changed[0, 3])  # the BOS position sees its predecessor
    pieces, pieces_changed = model.hidden(ids, max_seqlen=4), model.hidden(changed, max_seqlen=4)
    assert torch.equal(pieces[0, 4:], pieces_changed[0, 4:])  # nothing crosses into the next piece
