"""Document-causal attention: masks, layouts, and every backend against a plain softmax reference."""

import inspect
import sys
import types
import warnings

import pytest
import torch

from pgolf import attention, cudnn_attention
from pgolf.attention import attend, build_layout, document_ids, document_mask, resolve_backend
from pgolf.errors import PgolfError

BOS = 1


def reference_attention(q, k, v, doc_ids, window):
    """Slow reference: the visibility rule spelled out per (query, key) pair, then a dense masked softmax."""
    B, T, H, D = q.shape
    rep = H // k.size(2)
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    docs = doc_ids.tolist()
    visible = torch.tensor(
        [
            [
                [s <= t and docs[b][s] == docs[b][t] and (window is None or t - s <= window) for s in range(T)]
                for t in range(T)
            ]
            for b in range(B)
        ]
    )
    scores = torch.einsum("bthd,bshd->bhts", q, k) / D**0.5
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    return torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)


def fake_flash_varlen(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    **unused,
):
    """flash_attn_varlen_func's documented API in plain torch (packed (total, H, D) tensors)."""
    assert torch.equal(cu_seqlens_q, cu_seqlens_k) and cu_seqlens_q.dtype == torch.int32 and causal
    H, D = q.shape[1], q.shape[2]
    rep = H // k.shape[1]
    out = torch.empty_like(q)
    bounds = cu_seqlens_q.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        assert b - a <= max_seqlen_q
        qs, ks, vs = q[a:b], k[a:b].repeat_interleave(rep, 1), v[a:b].repeat_interleave(rep, 1)
        scores = torch.einsum("thd,shd->hts", qs, ks) * (softmax_scale or D**-0.5)
        t = torch.arange(b - a)
        allowed = t[None, :] <= t[:, None]
        if window_size[0] >= 0:
            allowed &= t[:, None] - t[None, :] <= window_size[0]
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[a:b] = torch.einsum("hts,shd->thd", scores.softmax(-1), vs)
    return out, torch.zeros(1)  # FA3 releases that also return the log-sum-exp


def torch_varlen_new(
    query,
    key,
    value,
    cu_seq_q,
    cu_seq_k,
    max_q,
    max_k,
    *,
    return_aux=None,
    scale=None,
    window_size=(-1, -1),
    enable_gqa=False,
):
    assert window_size[1] == 0 and (enable_gqa or key.shape[1] == query.shape[1])
    return fake_flash_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal=True, window_size=window_size)[
        0
    ]


def torch_varlen_old(
    query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, return_aux=None, scale=None
):
    assert is_causal and key.shape[1] == query.shape[1], "old varlen_attn has no GQA: heads must be repeated"
    return fake_flash_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal=True)[0]


def random_batch(B=3, T=40, H=4, Hkv=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 50, (B, T), generator=g)
    ids[0, [0, 9, 10, 25]] = BOS  # includes a one-token document
    ids[1, [5, 30]] = BOS  # tokens before the first BOS form their own document
    q = torch.randn(B, T, H, D, generator=g)
    k = torch.randn(B, T, Hkv, D, generator=g)
    v = torch.randn(B, T, Hkv, D, generator=g)
    return ids, q, k, v


@pytest.fixture
def fake_flash(monkeypatch):
    for name in ("flash_attn_interface", "flash_attn"):
        module = types.ModuleType(name)
        module.flash_attn_varlen_func = fake_flash_varlen
        monkeypatch.setitem(sys.modules, name, module)


def test_document_ids_start_at_bos():
    ids = torch.tensor([[5, 1, 7, 7, 1, 1, 3], [1, 2, 3, 4, 5, 6, 7]])
    assert document_ids(ids).tolist() == [[0, 1, 1, 1, 2, 3, 3], [1, 1, 1, 1, 1, 1, 1]]


def test_document_mask_is_causal_within_documents_and_window():
    ids = torch.tensor([[1, 4, 4, 4, 1, 4]])
    full = document_mask(document_ids(ids), None)[0, 0].int().tolist()
    assert full == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1, 1],
    ]
    windowed = document_mask(document_ids(ids), 1)[0, 0].int()
    assert windowed[3].tolist() == [0, 0, 1, 1, 0, 0]


def test_varlen_layout_cuts_at_every_bos_and_row_start(fake_flash):
    ids = torch.tensor([[1, 4, 4, 1, 4], [4, 4, 1, 4, 4]])
    layout = build_layout(ids, resolve_backend("fa3", "cpu"), {None})
    assert layout.cu_seqlens.dtype == torch.int32
    assert layout.cu_seqlens.tolist() == [0, 3, 5, 7, 10]
    assert layout.max_seqlen == 5


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("name", ["sdpa", "flex", "fa3", "flash_attn", "varlen_new", "varlen_old"])
def test_backends_match_reference(name, window, fake_flash, monkeypatch):
    ids, q, k, v = random_batch()
    if name.startswith("varlen"):
        fake = torch_varlen_new if name == "varlen_new" else torch_varlen_old
        monkeypatch.setattr(attention, "_torch_varlen", lambda: fake)
        if name == "varlen_old" and window is not None:
            with pytest.raises(PgolfError):  # old torch: no sliding window, so the backend is refused
                resolve_backend("varlen", "cuda", windowed=True)
            return
        backend = resolve_backend("varlen", "cuda", windowed=window is not None)
    else:
        backend = resolve_backend(name, "cpu", windowed=window is not None)
    layout = build_layout(ids, backend, {window})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex on the CPU warns that it runs unfused
        y = attend(backend, q, k, v, layout, window)
    expected = reference_attention(q, k, v, document_ids(ids), window)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_auto_picks_sdpa_on_cpu_and_flash_on_cuda(fake_flash):
    assert resolve_backend("auto", "cpu").name == "sdpa"
    backend = resolve_backend("auto", "cuda")
    assert backend.name == "fa3" and backend.varlen_fn is fake_flash_varlen


def test_auto_on_cuda_without_fa3_takes_flex_only_for_the_compiled_training_step(monkeypatch):
    monkeypatch.setattr(attention, "_import_flash", lambda name: None)
    monkeypatch.setattr(attention, "_torch_varlen", lambda: torch_varlen_old)
    assert resolve_backend("auto", "cuda", compiled=True).name == "flex"
    assert resolve_backend("auto", "cuda").name == "varlen"
    assert resolve_backend("auto", "cuda", windowed=True).name == "flex"  # old varlen cannot slide
    monkeypatch.setattr(attention, "_flex_available", lambda: False)
    assert resolve_backend("auto", "cuda", compiled=True).name == "varlen"


def test_backend_errors_name_the_fix(monkeypatch):
    with pytest.raises(PgolfError, match="unknown"):
        resolve_backend("xformers", "cpu")
    with pytest.raises(PgolfError, match="not usable on cpu"):
        resolve_backend("varlen", "cpu")
    monkeypatch.delitem(sys.modules, "flash_attn_interface", raising=False)
    monkeypatch.setattr(attention, "_import_flash", lambda name: None)
    with pytest.raises(PgolfError, match="flash"):
        resolve_backend("fa3", "cuda")


def test_torch_varlen_flags_follow_the_installed_signature():
    fn = attention._torch_varlen()
    if fn is None:
        pytest.skip("this torch has no varlen_attn")
    params = inspect.signature(fn).parameters
    backend = attention._try_backend("varlen", cuda=True, windowed=False)
    assert backend.varlen_fn is fn
    assert backend.torch_varlen_window == ("window_size" in params)
    assert backend.torch_varlen_gqa == ("enable_gqa" in params)
    assert backend.torch_varlen_window or "is_causal" in params


def test_model_takes_cuts_made_ahead_on_the_cpu(fake_flash):
    """The trainer's CPU-made cu_seqlens give the same loss as the cuts the model makes itself, and are used."""
    from pgolf.attention import segment_offsets
    from pgolf.model import GPT, ModelConfig

    torch.manual_seed(0)
    model = GPT(
        ModelConfig(
            vocab_size=64,
            num_layers=2,
            model_dim=32,
            num_heads=4,
            num_kv_heads=2,
            rope_dims=4,
            gate_window=4,
            num_loops=0,
            loop_start=0,
            loop_end=0,
            parallel_start_layer=None,
            xsa_last_n=2,
            train_seq_len=16,
        )
    )
    with torch.no_grad():
        model.qo_bank.normal_(0, 0.2)  # the O projections start at zero; make attention reach the loss
    model.attention_backend = "fa3"
    ids = torch.randint(2, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    ids[:, 0], ids[0, 7], ids[1, 3] = BOS, BOS, BOS
    targets = torch.roll(ids, -1, dims=1)
    cuts = segment_offsets(ids)
    assert cuts.tolist() == [0, 7, 16, 19, 32]
    inside = model(ids, targets, reduction="none")
    torch.testing.assert_close(model(ids, targets, reduction="none", cu_seqlens=cuts), inside, rtol=0, atol=0)
    one_segment_per_row = torch.tensor([0, 16, 32], dtype=torch.int32)
    leaked = model(ids, targets, reduction="none", cu_seqlens=one_segment_per_row)
    assert not torch.allclose(leaked[0, 7:], inside[0, 7:])  # attention across the BOS changes the second doc
    torch.testing.assert_close(leaked[0, :7], inside[0, :7])  # and nothing before it


def test_max_len_splits_long_segments_from_their_start():
    from pgolf.attention import segment_ids, segment_offsets

    ids = torch.full((1, 16), 7)
    ids[0, [0, 10, 15]] = BOS  # documents of 10, 5 and 1 tokens
    assert segment_offsets(ids).tolist() == [0, 10, 15, 16]
    assert segment_offsets(ids, max_len=4).tolist() == [0, 4, 8, 10, 14, 15, 16]
    assert segment_offsets(ids, max_len=5).tolist() == [0, 5, 10, 15, 16]
    rows = torch.full((2, 6), 7)
    rows[0, 3] = BOS  # row starts cut too: 3 + 3, then a 6-token row
    assert segment_offsets(rows, max_len=2).tolist() == [0, 2, 3, 5, 6, 8, 10, 12]
    cuts = segment_offsets(ids, max_len=4)
    assert segment_ids(cuts, 1, 16).tolist() == [[0] * 4 + [1] * 4 + [2] * 2 + [3] * 4 + [4, 5]]


def block_sets(mask):
    """Per (row, query block): the set of partial and the set of full key blocks of a BlockMask."""

    def sets(num, idx):
        return [[set(idx[b, 0, i, : int(num[b, 0, i])].tolist()) for i in range(num.size(-1))]
                for b in range(num.size(0))]  # fmt: skip

    return sets(mask.kv_num_blocks, mask.kv_indices), sets(mask.full_kv_num_blocks, mask.full_kv_indices)


@pytest.mark.parametrize("window", [None, 100, 300])
@pytest.mark.parametrize("shape", [(2, 640), (1, 1000), (3, 256)])
def test_flex_block_mask_from_segment_ids_equals_create_block_mask(shape, window):
    """The block classification from each block's first and last segment id equals create_block_mask's, which
    evaluates every (query, key) pair: full and partial blocks, tail blocks shorter than 128 included."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, T = shape
    g = torch.Generator().manual_seed(T + (window or 0))
    ids = torch.randint(2, 50, (B, T), generator=g)
    ids[torch.rand(B, T, generator=g) < 0.006] = BOS
    ids[0, 130:140] = BOS  # one-token documents
    ids[-1, 1:] = 7  # the last row one document: full blocks
    doc_ids = document_ids(ids)

    def mask_mod(b, h, q, kv):
        keep = (kv <= q) & (doc_ids[b, q] == doc_ids[b, kv])
        return keep & (q - kv <= window) if window is not None else keep

    expected = create_block_mask(mask_mod, B, None, T, T, device="cpu")
    got = attention._flex_block_mask(doc_ids, window)
    assert block_sets(got) == block_sets(expected)
    if window is None or window >= 2 * 128 - 1:
        assert any(row for row in block_sets(got)[1][-1]), "the last row has full blocks"


def test_compiled_flex_takes_segments_from_cuts_made_ahead():
    """The trainer's stream packing under torch.compile: segment ids made from a cu_seqlens of dynamic length
    inside the graph, the block mask built from them; the result equals the dense reference."""
    from torch.nn.attention.flex_attention import flex_attention

    from pgolf.attention import segment_ids, segment_offsets

    T = 512
    ids, q, k, v = random_batch(B=2, T=T // 2, H=4, Hkv=2, D=16)
    ids, q, k, v = (t.reshape(1, T, *t.shape[2:]) for t in (ids, q, k, v))  # one packed row
    ids[0, [100, 101, 350]] = BOS
    cuts = segment_offsets(ids, max_len=128)

    def attend_stream(q, k, v, cuts):
        block_mask = attention._flex_block_mask(segment_ids(cuts, 1, T), None)
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)

    torch._dynamo.mark_dynamic(cuts, 0)
    compiled = torch.compile(attend_stream, fullgraph=True)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = compiled(qt, kt, vt, cuts).transpose(1, 2)
    expected = reference_attention(q, k, v, segment_ids(cuts, 1, T), None)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_packed_stream_through_varlen_matches_sdpa_with_the_split_length_as_max_seqlen(fake_flash):
    from pgolf.attention import segment_offsets
    from pgolf.model import GPT, ModelConfig

    seen = []

    def recording(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw):
        seen.append(max_seqlen_q)
        return fake_flash_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw)

    sys.modules["flash_attn_interface"].flash_attn_varlen_func = recording
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(
            vocab_size=64,
            num_layers=2,
            model_dim=32,
            num_heads=4,
            num_kv_heads=2,
            rope_dims=4,
            gate_window=4,
            num_loops=0,
            loop_start=0,
            loop_end=0,
            parallel_start_layer=None,
            xsa_last_n=2,
            train_seq_len=16,
        )
    )
    with torch.no_grad():
        model.qo_bank.normal_(0, 0.2)
    stream = torch.randint(2, 64, (1, 48), generator=torch.Generator().manual_seed(1))
    stream[0, [0, 30]] = BOS  # documents of 30 and 18 tokens, split every 16
    cuts = segment_offsets(stream, max_len=16)
    assert cuts.tolist() == [0, 16, 30, 46, 48]
    reference = model(stream, cu_seqlens=cuts)  # sdpa, the CPU default
    model.attention_backend = "fa3"
    torch.testing.assert_close(model(stream, cu_seqlens=cuts, max_seqlen=16), reference, atol=1e-5, rtol=1e-5)
    assert seen and set(seen) == {16}


def test_cudnn_backend_feeds_the_packed_kernel_equal_heads(monkeypatch):
    """The cudnn path flattens the batch, repeats K/V heads up to Q's, and cuts at the layout's segments: with the
    packed reference standing in for aten's cuDNN kernel it matches the slow reference."""
    seen = {}

    def kernel(q, k, v, attn_bias, cu_q, cu_k, max_q, max_k, compute_log_sumexp, dropout_p, is_causal, debug_mask):
        seen["heads"] = (q.size(1), k.size(1))
        assert attn_bias is None and dropout_p == 0.0 and is_causal and not debug_mask
        return (fake_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=True)[0],)

    monkeypatch.setattr(torch.ops.aten, "_cudnn_attention_forward", kernel)
    backend = attention.Backend("cudnn", cudnn_attention.cudnn_varlen)
    ids, q, k, v = random_batch()
    y = attend(backend, q, k, v, build_layout(ids, backend, {None}))
    assert seen["heads"] == (4, 4) and k.size(2) == 2
    torch.testing.assert_close(y, reference_attention(q, k, v, document_ids(ids), None), atol=1e-5, rtol=1e-5)


def test_cudnn_backend_is_refused_on_the_cpu_and_with_a_window(monkeypatch):
    with pytest.raises(PgolfError, match="'cudnn' is not usable on cpu"):
        resolve_backend("cudnn", "cpu")
    monkeypatch.setattr(cudnn_attention, "cudnn_probe", lambda: None)
    assert resolve_backend("cudnn", "cuda").name == "cudnn"
    with pytest.raises(PgolfError, match="not usable on cuda"):
        resolve_backend("cudnn", "cuda", windowed=True)  # cuDNN's packed path has no sliding window
    monkeypatch.setattr(cudnn_attention, "cudnn_probe", lambda: "RuntimeError: no kernel")
    with pytest.raises(PgolfError, match="cuDNN probe: RuntimeError: no kernel"):
        resolve_backend("cudnn", "cuda")


def test_model_attention_names_a_backend():
    from pgolf.model import ModelConfig

    assert ModelConfig(attention="flex").attention == "flex"
    with pytest.raises(PgolfError, match="model.attention: unknown backend 'xformers'"):
        ModelConfig(attention="xformers")
