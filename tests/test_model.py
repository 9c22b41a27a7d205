"""The record model: exact size, causality, document isolation, recurrence, hooks and the unbanked view."""

import dataclasses
import sys
import types
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from pgolf.errors import PgolfError
from pgolf.model import GPT, ModelConfig, layer_orders, softcap

ROOT = Path(__file__).resolve().parent.parent
BOS = 1

# Every component on: 3 looped layers (1-2, twice extra), XSA on the last 3, lanes from layer 3.
TINY = dict(
    vocab_size=64,
    num_layers=5,
    model_dim=32,
    num_heads=4,
    num_kv_heads=2,
    mlp_mult=2.0,
    rope_dims=4,
    gate_window=4,
    num_loops=2,
    loop_start=1,
    loop_end=2,
    parallel_start_layer=3,
    xsa_last_n=3,
    train_seq_len=32,
)


def tiny_model(seed=0, **overrides) -> GPT:
    """A tiny model with every parameter moved off its (often zero) init so that every path is live."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bank") or name == "tok_emb.weight":
                p.normal_(0, p.size(-1) ** -0.5 if name.endswith("bank") else 1.0)
            elif not name.startswith("softcap_"):
                p.add_(0.5 * torch.randn_like(p))
    model.looping = True
    return model.eval()


def batch(B=2, T=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, TINY["vocab_size"], (B, T), generator=g)
    ids[:, 0] = BOS
    ids[0, 10] = BOS
    return ids


def test_record_parameter_count_is_upstreams():
    with torch.device("meta"):  # shapes only: the record's orthogonal init takes long on 2 cores
        model = GPT(ModelConfig())
    assert sum(p.numel() for p in model.parameters()) == 35_945_671  # train_seed42.log: model_params
    assert model.qo_bank.shape == (22, 512, 512) and model.kv_bank.shape == (22, 256, 512)
    assert model.mlp_up_bank.shape == (11, 2048, 512) and model.mlp_down_bank.shape == (11, 512, 2048)


def reference_upstream_init(config: ModelConfig, seed: int) -> dict:
    """#1855's GPT construction written out draw by draw under torch.manual_seed(seed): nn.Embedding's default
    N(0, 1) init, an untied head's and the SmearGate's nn.Linear kaiming-uniform init (both re-zeroed later), then
    _init_weights: the embedding's N(0, std), Q, K, V of every layer in one loop, every MLP up in a second; then
    GPT(h).bfloat16() + restore_fp32_params: every value bf16-rounded, the embedding kept in bf16."""
    n, d, kv, hidden, vocab = (config.num_layers, config.model_dim, config.kv_dim, config.mlp_dim, config.vocab_size)
    torch.manual_seed(seed)
    emb = torch.nn.init.normal_(torch.empty(vocab, d))
    if not config.tie_embeddings:
        torch.nn.init.kaiming_uniform_(torch.empty(vocab, d), a=5**0.5)
    if config.smear_gate:
        torch.nn.init.kaiming_uniform_(torch.empty(1, config.gate_window), a=5**0.5)
    torch.nn.init.normal_(emb, std=config.tied_embed_init_std)
    qo, kvb = torch.zeros(2 * n, d, d), torch.zeros(2 * n, kv, d)
    up = torch.zeros(n, hidden, d)
    for i in range(n):
        torch.nn.init.orthogonal_(qo[i])
        torch.nn.init.orthogonal_(kvb[i])
        torch.nn.init.orthogonal_(kvb[n + i])
    for i in range(n):
        torch.nn.init.orthogonal_(up[i])
    rounded = {name: t.bfloat16().float() for name, t in (("qo_bank", qo), ("kv_bank", kvb), ("mlp_up_bank", up))}
    return {"tok_emb.weight": emb.bfloat16(), **rounded}


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": False, "smear_gate": False}])
def test_init_draws_upstreams_weights_bit_for_bit(overrides):
    config = ModelConfig(**{**TINY, **overrides})
    expected = reference_upstream_init(config, 42)
    torch.manual_seed(42)
    model = GPT(config)
    state = model.state_dict()
    for name, t in expected.items():
        assert state[name].dtype == t.dtype and torch.equal(state[name], t), name
    n = config.num_layers
    assert model.qo_bank[n:].abs().max() == 0 and model.mlp_down_bank.abs().max() == 0  # zero-init outputs
    for w in (model.qo_bank[0], model.kv_bank[n], model.mlp_up_bank[2].T):  # orthogonal up to bf16 rounding
        small = min(w.shape)
        gram = w @ w.T if w.size(0) == small else w.T @ w
        torch.testing.assert_close(gram, torch.eye(small), atol=2e-2, rtol=0)
    assert torch.equal(model.blocks[0].attn.q_gain, torch.full((4,), 5.0))
    assert torch.equal(model.parallel_resid_lambdas, torch.full((n, 2), 1.1).bfloat16().float())  # 1.1015625
    assert torch.equal(model.rotary.inv_freq, model.rotary.inv_freq.bfloat16().float())
    if config.smear_gate:
        assert model.smear_gate.weight.abs().max() == 0 and model.smear_lambda.item() == 0
    if not config.tie_embeddings:
        assert model.lm_head.weight.abs().max() == 0
    fp32 = GPT(ModelConfig(**{**TINY, **overrides, "embed_bf16": False}))
    assert fp32.tok_emb.weight.dtype == torch.float32


def test_defaults_equal_config_yaml_and_smoke_overlay_is_valid():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert config["model"] == dataclasses.asdict(ModelConfig())
    smoke = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())
    ModelConfig.from_dict({**config["model"], **smoke["model"]})


def test_config_errors_name_the_key():
    with pytest.raises(PgolfError, match="model.num_kv_heads"):
        ModelConfig(num_kv_heads=3)
    with pytest.raises(PgolfError, match="model.loop_start"):
        ModelConfig(loop_start=6, loop_end=4)
    with pytest.raises(PgolfError, match="model.seq_schedule"):
        ModelConfig(seq_schedule=[[1024, 0.5], [2048, 0.3]])
    with pytest.raises(PgolfError, match="unknown key"):
        ModelConfig.from_dict({"num_layer": 3})
    assert ModelConfig(seq_schedule=[[1024, 0.1], [3072, 1]]).seq_schedule == [[1024, 0.1], [3072, 1.0]]


def test_recurrence_order_and_encoder_decoder_split():
    record = ModelConfig()
    assert layer_orders(record, looping=True) == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])
    assert layer_orders(record, looping=False) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10])
    model = tiny_model(num_layers=11, loop_start=3, loop_end=5, num_loops=2, parallel_start_layer=8)
    applied = []
    model(batch(), capture=lambda name, x: applied.append(int(name.split(".")[1])) if "c_q" in name else None)
    assert applied == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert model.virtual_layers() == applied


def test_future_tokens_never_change_earlier_logits():
    model, ids = tiny_model(), batch()
    changed = ids.clone()
    changed[:, 15:] = torch.randint(2, 64, changed[:, 15:].shape)
    changed[1, 18] = BOS
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15], atol=1e-5, rtol=1e-5)
    assert (a[:, 15:] - b[:, 15:]).abs().max() > 1e-3


def test_earlier_documents_never_change_a_documents_logits():
    model = tiny_model()
    doc = torch.tensor([BOS, 5, 9, 12, 7, 30, 31, 8])
    alone = model(doc[None])[0]
    for prefix in (
        torch.tensor([BOS, 3, 4]),
        torch.tensor([BOS, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49]),
        torch.tensor([17, 18]),
    ):  # the last: tokens before the first BOS of a window
        packed = model(torch.cat([prefix, doc])[None])[0]
        torch.testing.assert_close(packed[len(prefix) :], alone, atol=1e-4, rtol=1e-4)
    # without the BOS the same tokens continue the previous document and the logits do change
    joined = model(torch.cat([torch.tensor([BOS, 3, 4]), doc[1:]])[None])[0]
    assert (joined[3:] - alone[1:]).abs().max() > 1e-3


def test_smear_gate_never_carries_into_bos():
    model = tiny_model()
    ids = torch.tensor([[BOS, 5, 6, BOS, 7], [BOS, 9, 50, BOS, 7]])  # differ only just before the second BOS
    x = model._embed(ids, torch.float32)
    torch.testing.assert_close(x[0, 3:], x[1, 3:])
    assert (x[0, 2] - x[1, 2]).abs().max() > 1e-3
    smeared = model._embed(torch.tensor([[BOS, 5, 6, 8, 7]]), torch.float32)
    assert (smeared[0, 3] - x[0, 3]).abs().max() > 1e-3  # a non-BOS token at that place is smeared


def test_capture_names_counts_and_rows():
    model, ids = tiny_model(), batch()
    seen = Counter()
    widths = {}

    def capture(name, rows):
        seen[name] += 1
        widths[name] = rows.shape
        assert not rows.requires_grad

    model(ids, capture=capture)
    c, n_rows = model.config, ids.numel()
    expected = {"tok_emb.weight": 1}
    for i in range(c.num_layers):
        times = 3 if 1 <= i <= 2 else 1
        for part in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj"):
            expected[f"blocks.{i}.{part}.weight"] = times
    assert dict(seen) == expected
    assert widths["blocks.0.attn.c_k.weight"] == (n_rows, c.model_dim)
    assert widths["blocks.4.mlp.proj.weight"] == (n_rows, c.mlp_dim)
    assert widths["tok_emb.weight"] == (n_rows, c.model_dim)
    assert set(expected) - {"tok_emb.weight"} == {
        k
        for k in model.unbanked_state_dict()
        if k.endswith(("c_q.weight", "c_k.weight", "c_v.weight", "proj.weight", "fc.weight"))
    }


def test_adapters_change_outputs_only_where_used():
    model, ids = tiny_model(), batch()
    base = model(ids)
    calls = Counter()

    def silent(kind, slot, x):
        calls[kind, slot] += 1
        return None

    torch.testing.assert_close(model(ids, adapters=silent), base, atol=0, rtol=0)
    slots = len(model.virtual_layers())
    assert set(calls) == {(k, s) for k in "q k v o mlp".split() for s in range(slots)} | {("head", 0)}

    def row1_only(kind, slot, x):  # a per-document adapter that is zero for document row 0
        out = {"q": 32, "k": 16, "v": 16, "o": 32, "mlp": 32, "head": 64}[kind]
        delta = torch.zeros(*x.shape[:-1], out)
        if kind == "mlp" and slot == slots - 1 or kind == "v" and slot == 0:
            delta[1] = 0.3
        return delta

    out = model(ids, adapters=row1_only)
    torch.testing.assert_close(out[0], base[0])
    assert (out[1] - base[1]).abs().max() > 1e-3

    bump = torch.randn(64)
    head = model(ids, adapters=lambda kind, slot, x: bump.expand(*x.shape[:-1], 64) if kind == "head" else None)
    pre = model._project(model.hidden(ids), None, None)
    torch.testing.assert_close(head, softcap(pre + bump, 30.0), atol=1e-5, rtol=1e-5)


def test_loss_reductions_agree_with_logits():
    model, ids = tiny_model(), batch()
    targets = torch.roll(ids, -1, dims=1)
    logits = model(ids)
    per_token = model(ids, targets, reduction="none")
    assert per_token.shape == ids.shape and per_token.dtype == torch.float32
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), targets.reshape(-1), reduction="none")
    torch.testing.assert_close(per_token.reshape(-1), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(ids, targets), per_token.mean())
    assert logits.abs().max() <= 30.0


def test_unbanked_round_trip_is_exact():
    model, ids = tiny_model(), batch()
    state = model.unbanked_state_dict()
    assert next(iter(state)) == "tok_emb.weight"
    assert not any(name.endswith("bank") for name in state)
    n = model.config.num_layers
    torch.testing.assert_close(state["blocks.2.attn.proj.weight"], model.qo_bank[n + 2], atol=0, rtol=0)
    torch.testing.assert_close(state["blocks.3.attn.c_v.weight"], model.kv_bank[n + 3], atol=0, rtol=0)
    copy = GPT.from_unbanked(dataclasses.asdict(model.config), state).eval()
    copy.looping = True
    for (name, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(model(ids), copy(ids))
    assert sum(t.numel() for t in state.values()) == sum(p.numel() for p in model.parameters())


def test_load_unbanked_rejects_a_mismatched_state():
    state = tiny_model().unbanked_state_dict()
    missing = dict(state)
    del missing["blocks.0.mlp.fc.weight"]
    with pytest.raises(PgolfError, match="missing"):
        tiny_model().load_unbanked(missing)
    with pytest.raises(PgolfError, match="wrong shapes"):
        tiny_model(mlp_mult=3.0).load_unbanked(state)


def test_param_groups_partition_the_parameters_and_all_learn():
    model = tiny_model().train()
    groups = model.param_groups()
    assert [tuple(p.shape) for p in groups["matrix"]] == [(10, 32, 32), (10, 16, 32), (5, 64, 32), (5, 32, 64)]
    assert groups["embed"] == [model.tok_emb.weight]
    flat = [id(p) for ps in groups.values() for p in ps]
    assert len(flat) == len(set(flat)) and set(flat) == {id(p) for p in model.parameters()}
    ids = batch()
    model(ids, torch.roll(ids, -1, 1)).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_zero_gated_xsa_equals_no_xsa():
    gated = tiny_model(gated_xsa=True)
    assert sum(p.numel() for p in gated.parameters()) == sum(p.numel() for p in tiny_model().parameters()) + 3 * 4
    plain = tiny_model(xsa_last_n=0)
    state = {k: v for k, v in gated.state_dict().items() if "xsa_alpha" not in k}
    plain.load_state_dict(state)
    with torch.no_grad():
        for block in gated.blocks:
            if hasattr(block.attn, "xsa_alpha"):
                block.attn.xsa_alpha.zero_()
    ids = batch()
    torch.testing.assert_close(gated(ids), plain(ids), atol=1e-5, rtol=1e-5)


def test_asym_softcap_is_eval_only_and_identity_at_init():
    model = tiny_model(asym_logit_rescale=True)
    ids = batch()
    targets = torch.roll(ids, -1, 1)
    fixed = tiny_model()
    torch.testing.assert_close(model(ids), fixed(ids))
    with torch.no_grad():
        model.softcap_neg.fill_(10.0)
    assert (model(ids) - fixed(ids)).abs().max() > 1e-3
    torch.testing.assert_close(model.train()(ids, targets), fixed.train()(ids, targets))


def test_learnable_logit_caps_sit_in_no_optimizer_group_and_stay_put_in_training():
    """As upstream (#1923 lineage): AdamW's weight decay must not shrink caps that act only at eval."""
    from pgolf.optim import OptimConfig, Optimizers

    model = tiny_model(asym_logit_rescale=True).train()
    groups = model.param_groups()
    grouped = {id(p) for ps in groups.values() for p in ps}
    assert id(model.softcap_pos) not in grouped and id(model.softcap_neg) not in grouped
    assert grouped | {id(model.softcap_pos), id(model.softcap_neg)} == {id(p) for p in model.parameters()}
    opt = Optimizers(groups, OptimConfig())
    scalars = [p.detach().clone() for p in groups["scalar"]]
    for step in range(3):
        ids = batch(seed=step)
        model(ids, torch.roll(ids, -1, 1)).backward()
        opt.step(1.0, 0.95)
        opt.zero_grad()
    assert model.softcap_pos.item() == model.softcap_neg.item() == model.config.logit_softcap
    assert all(not torch.equal(a, b) for a, b in zip(scalars, groups["scalar"]))  # the other scalars trained


def test_sliding_window_at_least_the_sequence_is_full_attention():
    ids = batch()
    full = tiny_model()(ids)
    torch.testing.assert_close(tiny_model(attn_window=ids.size(1))(ids), full)
    narrow = tiny_model(attn_window=3, attn_window_layers=[0, 4])(ids)
    assert (narrow - full).abs().max() > 1e-3


def test_looping_off_runs_the_plain_stack():
    model = tiny_model()
    model.looping = False
    applied = []
    model(batch(), capture=lambda name, x: applied.append(name) if "c_q" in name else None)
    assert [int(n.split(".")[1]) for n in applied] == [0, 1, 2, 3, 4]


def test_model_backends_agree(monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_attention import fake_flash_varlen

    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_varlen_func = fake_flash_varlen
    monkeypatch.setitem(sys.modules, "flash_attn_interface", module)
    model, ids = tiny_model(attn_window=5, attn_window_layers=[1]), batch()
    reference = model(ids)
    for name in ("fa3", "flex"):
        model.attention_backend = name
        with warnings.catch_warnings(), torch.no_grad():  # flex has no CPU backward
            warnings.simplefilter("ignore")
            torch.testing.assert_close(model(ids), reference, atol=1e-5, rtol=1e-5)


def test_packed_stream_segments_are_their_own_documents():
    """One (1, N) row with cuts made ahead (the trainer's stream packing): BOS-started documents score as they do
    alone, and the pieces of a document split every max_len tokens see nothing of each other but SmearGate's
    one-token carry."""
    from pgolf.attention import segment_offsets

    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    docs = [torch.randint(2, TINY["vocab_size"], (n,), generator=g) for n in (20, 12, 16)]
    for d in docs:
        d[0] = BOS
    stream = torch.cat(docs)[None]
    targets = torch.roll(stream, -1, dims=1)
    packed = model(stream, targets, reduction="none", cu_seqlens=segment_offsets(stream, max_len=32))[0]
    start = 0
    for d in docs:
        alone = model(d[None], targets[:, start : start + len(d)], reduction="none")[0]
        torch.testing.assert_close(packed[start : start + len(d)], alone, atol=1e-4, rtol=1e-4)
        start += len(d)

    doc = torch.randint(2, TINY["vocab_size"], (1, 40), generator=g)
    doc[0, 0] = BOS
    cuts = segment_offsets(doc, max_len=16)
    assert cuts.tolist() == [0, 16, 32, 40]
    base = model(doc, reduction="none", cu_seqlens=cuts)
    ahead = model.layout(doc, cuts, 16)  # the trainer's way: the layout built before the (compiled) forward
    torch.testing.assert_close(model(doc, reduction="none", layout=ahead), base, atol=0, rtol=0)
    with pytest.raises(ValueError, match="cu_seqlens, max_seqlen.*or a layout built from them, not both"):
        model(doc, cu_seqlens=cuts, layout=ahead)
    changed = doc.clone()
    changed[0, 1:15] = torch.randint(2, TINY["vocab_size"], (14,), generator=g)
    torch.testing.assert_close(model(changed, cu_seqlens=cuts)[0, 16:], base[0, 16:], atol=1e-6, rtol=0)
    carried = doc.clone()
    carried[0, 15] = (doc[0, 15] + 1) % TINY["vocab_size"] or 2
    moved = model(carried, cu_seqlens=cuts)[0]
    assert not torch.allclose(moved[16], base[0, 16])  # the SmearGate carry across the cut (then attention within)
    torch.testing.assert_close(moved[32:], base[0, 32:], atol=1e-6, rtol=0)  # the third piece sees neither


def test_pr1572_parameter_count_is_its_dumps():
    """#1572's model (no gates, single-lane parallel residual from layer 7): train_seed42_frontier.log's model_params."""
    from pgolf.config import resolve

    config = resolve([ROOT / "config.yaml", ROOT / "recipes/pr1572.yaml"])["model"]
    with torch.device("meta"):
        model = GPT(ModelConfig.from_dict(config))
    assert sum(p.numel() for p in model.parameters()) == 35_944_536
    assert not hasattr(model, "parallel_post_lambdas") and not hasattr(model, "smear_gate")


def test_single_lane_parallel_block_reads_one_input_and_adds_both_outputs():
    """From the parallel start layer, attention and MLP read the same normed input (the capture of c_q's and fc's
    rows agree; before that layer they differ), and the block returns x + attn_scale*attn + mlp_scale*mlp."""
    model, ids = tiny_model(parallel_residual="single"), batch()
    rows = {}
    model(ids, capture=lambda name, r: rows.setdefault(name, r))
    torch.testing.assert_close(rows["blocks.4.attn.c_q.weight"], rows["blocks.4.mlp.fc.weight"])
    assert (rows["blocks.0.attn.c_q.weight"] - rows["blocks.0.mlp.fc.weight"]).abs().max() > 1e-3
    # with the MLP scale of the parallel layers at zero a parallel block is attention alone: the same output as a
    # sequential block with a zero MLP scale
    with torch.no_grad():
        for i in (3, 4):
            model.blocks[i].mlp_scale.zero_()
    sequential = tiny_model(parallel_residual="single", parallel_start_layer=None)
    sequential.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(ids), sequential(ids), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        model.blocks[4].mlp_scale.fill_(1.0)
    assert (model(ids) - sequential(ids)).abs().max() > 1e-3
    lanes = tiny_model(parallel_residual="lanes")
    assert hasattr(lanes, "parallel_post_lambdas") and not hasattr(model, "parallel_post_lambdas")


def test_cross_document_attention_equals_a_dense_causal_mask():
    """cross_document: a BOS is no boundary; each row (or each max_seqlen piece of a packed row) is plainly causal."""
    from pgolf.attention import DocLayout

    isolated, ids = tiny_model(), batch()
    cross = tiny_model(cross_document=True)
    T = ids.size(1)
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None].expand(ids.size(0), 1, T, T)
    dense = DocLayout(torch.zeros_like(ids, dtype=torch.int32), masks={None: causal})
    isolated.attention_backend = cross.attention_backend = "sdpa"
    reference = isolated(ids, layout=dense)
    torch.testing.assert_close(cross(ids), reference, atol=1e-5, rtol=1e-5)
    assert (isolated(ids) - reference).abs().max() > 1e-3  # the BOS at row 0, column 10 cuts the isolated model
    # a packed (1, 2T) row with max_seqlen T: two independent causal windows, whatever cuts were made ahead
    from pgolf.attention import segment_offsets

    stream = ids.reshape(1, -1)
    packed = cross(stream, cu_seqlens=segment_offsets(stream, T), max_seqlen=T)
    torch.testing.assert_close(packed.reshape(ids.shape + (-1,)), reference, atol=1e-5, rtol=1e-5)
