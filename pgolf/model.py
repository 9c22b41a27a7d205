"""The record model of PR #1855 (docs/record-stack.md §3): an 11-layer GPT with parameter banks, depth recurrence,
U-Net skips, parallel residual lanes, XSA, partial RoPE and the Smear/SparseAttn gates.

Every stage codes against `GPT`:
    model = GPT(ModelConfig())                       # record defaults, 35,945,671 parameters
    loss = model(ids, targets)                       # ids (B, T) int64 with documents starting at BOS (id 1)
    nll = model(ids, targets, reduction="none")      # (B, T) float32
    logits = model(ids)                              # (B, T, V) float32, softcapped
    model(ids, capture=fn)                           # fn(name, rows) for every quantized matrix's input rows
    model(ids, targets, adapters=fn)                 # fn(kind, slot, x) -> tensor added to that output (TTT LoRA)
    model(ids, targets, cu_seqlens=segment_offsets(ids))  # document cuts made ahead (the trainer, on the CPU)
    model(stream, targets, cu_seqlens=segment_offsets(stream, 2048), max_seqlen=2048)  # the record's (1, N) packing
    model(ids, targets, layout=model.layout(ids, cu, 2048))  # the layout built ahead (the trainer, outside compile)
    model.looping = True                             # depth recurrence (training turns it on at enable_looping_at)
    model.qat = True                                 # fake int6 weights in training forwards (#1512's late QAT)
    state = model.unbanked_state_dict(); GPT.from_unbanked(config, state)

Documents are isolated inside the model: no attention across a BOS boundary and no SmearGate carry into a BOS
(`cross_document` drops the attention boundary: causal within each row, as #1572 trained and scored).
On CUDA the forward runs in bf16 (weights cast at use, parameters stay fp32); on the CPU in fp32.
"""

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from .attention import BACKENDS, Backend, DocLayout, attend, build_layout, resolve_backend
from .errors import PgolfError
from .io import load_torch
from .shards import BOS_ID
from .stageconfig import from_dict

BANKS = ("qo_bank", "kv_bank", "mlp_up_bank", "mlp_down_bank")
ADAPTER_KINDS = ("q", "k", "v", "o", "mlp", "head")
PARALLEL_RESIDUALS = ("lanes", "single")


@dataclass
class ModelConfig:
    """Architecture knobs; defaults are the record's (train_seed42.log hyperparameter dump)."""

    vocab_size: int = 8192
    num_layers: int = 11
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 4.0
    leaky_relu_slope: float = 0.5
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    embed_bf16: bool = True  # token embedding stored (and trained) in bf16, as upstream's GPT(h).bfloat16() leaves it
    logit_softcap: float = 30.0
    asym_logit_rescale: bool = False  # eval/TTT softcap with learned positive/negative caps (#1923)
    rope_dims: int = 16
    rope_base: float = 10000.0
    rope_train_len: int | None = None  # #1019's RoPE: longer sequences raise the base by (T/this)^(d/(d-2)); None = off
    ln_scale: bool = True  # norm outputs scaled by 1/sqrt(layer + 1)
    qk_gain_init: float = 5.0
    xsa_last_n: int = 11
    gated_xsa: bool = False  # XSA term scaled by tanh(alpha_h), alpha init 0 (#2018)
    smear_gate: bool = True
    smear_per_dim: bool = False  # #1019's SmearGate: a learned mix per dimension after the embedding norm
    bigram_buckets: int = 0  # #1019's BigramHash embedding rows; 0 = off
    bigram_dim: int = 128
    value_embed_layers: list[int] | None = None  # layers whose values add the shared value embedding; None = off
    value_embed_dim: int = 128
    skip_gates: bool = True  # sigmoid-gated U-Net skips (#1855); false: #1019's x + w * skip
    partial_key_offset: bool = False  # #1512: full-attention layers' non-rotary key dims come from position t-1
    sparse_attn_gate: bool = True
    gate_window: int = 12
    sparse_attn_gate_scale: float = 0.5
    num_loops: int = 2
    loop_start: int = 3
    loop_end: int = 5  # inclusive
    enable_looping_at: float = 0.35  # training fraction at which the trainer turns looping on
    parallel_start_layer: int | None = 8  # decoder layers from this physical index run in parallel; None = off
    parallel_residual: str = (
        "lanes"  # lanes: two lanes with learned mixing (#1855); single: x + attn(x) + mlp(x) (#1493)
    )
    cross_document: bool = False  # attend across BOS within each window (#1493/#1572); False: documents isolated
    attn_window: int | None = None  # sliding window: keys at most this many positions back; None = full
    attn_window_layers: list[int] | None = None  # layers with the window; None = all (when attn_window is set)
    train_seq_len: int = 2048
    seq_schedule: list[list[float]] | None = None  # [[seq_len, until_frac], ...] read by the trainer
    attention: str = "auto"  # the training step's kernel: "auto" or a name of pgolf.attention.BACKENDS
    fused_ce: bool = True  # training loss through pgolf.kernels.softcapped_ce (#1855's FUSED_CE_ENABLED)
    fused_mlp: bool = True  # training MLP through pgolf.kernels.mlp (#1855's fused up-projection epilogue)

    def __post_init__(self):
        if self.seq_schedule is not None:
            self.seq_schedule = [[int(n), float(f)] for n, f in self.seq_schedule]
        self.check()

    def check(self):
        """The values' consistency. A config dataclass's `check` runs where the DAG builds it; the submission's
        script leaves it out, pgolf.codepack having run it on the script's config (codepack.check_config)."""

        def bad(key, why):
            raise PgolfError(f"config model.{key}: {why}; fix it in config.yaml or your recipe")

        if self.model_dim % self.num_heads:
            bad("num_heads", f"must divide model_dim {self.model_dim}")
        if self.num_heads % self.num_kv_heads:
            bad("num_kv_heads", f"must divide num_heads {self.num_heads}")
        head_dim = self.model_dim // self.num_heads
        if self.rope_dims % 2 or not 0 < self.rope_dims <= head_dim:
            bad("rope_dims", f"must be even and in 2..{head_dim} (the head dim)")
        if not 0 < self.gate_window <= self.model_dim:
            bad("gate_window", f"must be in 1..{self.model_dim}")
        if self.num_loops and not 0 <= self.loop_start <= self.loop_end < self.num_layers:
            bad("loop_start", f"need 0 <= loop_start <= loop_end < num_layers ({self.num_layers})")
        if not 0 <= self.xsa_last_n <= self.num_layers:
            bad("xsa_last_n", f"must be in 0..{self.num_layers}")
        if self.attention not in ("auto",) + BACKENDS:
            bad("attention", f"unknown backend {self.attention!r}; use one of {('auto',) + BACKENDS}")
        # an option's own checks sit in its module, run where the option is on (pgolf.codepack.OPTIONAL)
        if self.bigram_buckets or self.value_embed_layers or self.smear_per_dim:
            from .embeds import check_config

            check_config(self, bad)
        if self.rope_train_len is not None:
            from .rope_scaling import check_config

            check_config(self, bad)
        if self.parallel_residual not in PARALLEL_RESIDUALS:
            bad("parallel_residual", f"{self.parallel_residual!r} is not one of {PARALLEL_RESIDUALS}")
        if self.attn_window is not None:
            from .sliding_window import check_config

            check_config(self, bad)
        if self.seq_schedule is not None:
            fracs = [f for _, f in self.seq_schedule]
            if not fracs or fracs != sorted(fracs) or fracs[-1] != 1.0:
                bad("seq_schedule", "list [[seq_len, until_frac], ...] with increasing fractions ending at 1.0")

    @classmethod
    def from_dict(cls, values: dict | None, where: str = "config model") -> "ModelConfig":
        return from_dict(cls, values, where)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def mlp_dim(self) -> int:
        return int(self.mlp_mult * self.model_dim)


def layer_orders(config: ModelConfig, looping: bool) -> tuple[list[int], list[int]]:
    """(encoder, decoder) physical layer indices in application order (docs/record-stack.md §3.2 items 4-5)."""
    n = config.num_layers
    if looping and config.num_loops > 0:
        segment = list(range(config.loop_start, config.loop_end + 1))
        order = list(range(config.loop_start)) + segment * (config.num_loops + 1)
        order += list(range(config.loop_end + 1, n))
    else:
        order = list(range(n))
    half = len(order) // 2
    return order[:half], order[half:]


# Hot paths kept as small functions so fused kernels can replace them.
def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on the first 2*cos.size(-1) dims of each head; the rest pass through."""
    rd = 2 * cos.size(-1)
    x1, x2, rest = x[..., : rd // 2], x[..., rd // 2 : rd], x[..., rd:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, rest), dim=-1)


def exclusive_self_attention(y: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """XSA: remove from each head's output its component along its own position's (unit) value vector."""
    B, T, H, D = y.shape
    hkv = v.size(2)
    yg = y.reshape(B, T, hkv, H // hkv, D)
    vn = F.normalize(v, dim=-1).unsqueeze(3)
    coef = (yg * vn).sum(-1, keepdim=True)
    if alpha is not None:
        coef = coef * torch.tanh(alpha).to(y.dtype).view(1, 1, hkv, H // hkv, 1)
    return (yg - coef * vn).reshape(B, T, H, D)


def mlp_hidden(x: torch.Tensor, up_w: torch.Tensor, slope: float) -> torch.Tensor:
    return F.leaky_relu(F.linear(x, up_w), negative_slope=slope).square()


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    return cap * torch.tanh(logits / cap)


def cross_entropy(capped: torch.Tensor, targets: torch.Tensor, reduction: str):
    """CE of softcapped fp32 logits (..., V) against targets (...) (targets of -100 are ignored)."""
    loss = F.cross_entropy(capped.reshape(-1, capped.size(-1)), targets.reshape(-1), reduction=reduction)
    return loss.reshape(targets.shape) if reduction == "none" else loss


class Rotary(nn.Module):
    """cos/sin tables of partial RoPE: frequencies base^(-2j/rope_dims) over the rotated dims only. With
    `train_len` a longer sequence raises the base (pgolf.rope_scaling)."""

    def __init__(self, rope_dims: int, base: float, train_len: int | None = None):
        super().__init__()
        self.rope_dims, self.base, self.train_len = rope_dims, base, train_len
        inv_freq = 1.0 / base ** (torch.arange(0, rope_dims, 2, dtype=torch.float32) / rope_dims)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, T: int, device, dtype):
        inv_freq = self.inv_freq.to(device)
        if self.train_len is not None and T > self.train_len:
            from .rope_scaling import scaled_inv_freq

            inv_freq = scaled_inv_freq(self, T, device)
        freqs = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)
        return freqs.cos()[None, :, None, :].to(dtype), freqs.sin()[None, :, None, :].to(dtype)


class Attention(nn.Module):
    """Per-layer attention controls; the Q/K/V/O matrices live in the GPT's banks."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.q_gain = nn.Parameter(torch.full((config.num_heads,), config.qk_gain_init))
        if config.sparse_attn_gate:
            self.attn_gate_w = nn.Parameter(torch.zeros(config.num_heads, config.gate_window))
        self.use_xsa = layer >= config.num_layers - config.xsa_last_n
        if self.use_xsa and config.gated_xsa:
            self.xsa_alpha = nn.Parameter(torch.zeros(config.num_heads))
        in_window = config.attn_window_layers is None or layer in config.attn_window_layers
        self.window = config.attn_window if in_window else None
        self.key_offset = config.partial_key_offset and self.window is None


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        d = config.model_dim
        self.attn = Attention(config, layer)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))
        self.ln_scale_factor = 1.0 / math.sqrt(layer + 1) if config.ln_scale else 1.0


class _Pass(NamedTuple):
    """What every layer application of one forward shares."""

    backend: Backend
    layout: DocLayout
    banks: tuple  # the four banks cast once to the compute dtype
    cos: torch.Tensor
    sin: torch.Tensor
    capture: Callable | None
    adapters: Callable | None
    starts: torch.Tensor | None = None  # (B, T) bool: documents' first positions (BOS), for the key offset
    value_embed: torch.Tensor | None = None  # (B, T, kv_dim): the shared value embedding of this batch


def _adapt(p: _Pass, kind: str, slot: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if p.adapters is None:
        return out
    delta = p.adapters(kind, slot, x)
    return out if delta is None else out + delta.to(out.dtype)


def _capture(p: _Pass, name: str, x: torch.Tensor):
    if p.capture is not None:
        p.capture(name, x.detach().reshape(-1, x.size(-1)))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig | dict | None = None):
        super().__init__()
        config = config or ModelConfig()
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        self.config = c = config
        n, d = c.num_layers, c.model_dim
        self.tok_emb = nn.Embedding(c.vocab_size, d)
        if not c.tie_embeddings:
            self.lm_head = nn.Linear(d, c.vocab_size, bias=False)
        self.qo_bank = nn.Parameter(torch.empty(2 * n, d, d))  # [Q_0..Q_n-1, O_0..O_n-1]
        self.kv_bank = nn.Parameter(torch.empty(2 * n, c.kv_dim, d))  # [K_0..K_n-1, V_0..V_n-1]
        self.mlp_up_bank = nn.Parameter(torch.empty(n, c.mlp_dim, d))
        self.mlp_down_bank = nn.Parameter(torch.empty(n, d, c.mlp_dim))
        self.blocks = nn.ModuleList(Block(c, i) for i in range(n))
        enc, dec = layer_orders(c, looping=True)
        self.skip_weights = nn.Parameter(torch.ones(min(len(enc), len(dec)), d))
        if c.skip_gates:
            self.skip_gates = nn.Parameter(torch.zeros(min(len(enc), len(dec)), d))
        if c.parallel_start_layer is not None and c.parallel_residual == "lanes":
            self.parallel_post_lambdas = nn.Parameter(torch.ones(n, 2, 2))  # [layer, attn|mlp, lane]
            self.parallel_resid_lambdas = nn.Parameter(torch.full((n, 2), 1.1))
        if c.smear_gate:
            self.smear_gate = nn.Linear(c.gate_window, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if c.smear_per_dim:
            self.smear_dim_gate = nn.Parameter(torch.zeros(d))
        # #1019/#1512's modules are imported where their option runs: a script whose config turns them off leaves them
        # out (pgolf.codepack.OPTIONAL)
        if c.bigram_buckets:
            from .embeds import BigramHash

            self.bigram = BigramHash(c.bigram_buckets, c.bigram_dim, d)
        if c.value_embed_layers:
            from .embeds import ValueEmbedding

            self.value_embed = ValueEmbedding(c.vocab_size, c.value_embed_dim, c.kv_dim)
            self.value_embed_scales = nn.Parameter(torch.ones(len(c.value_embed_layers)))
        if c.asym_logit_rescale:
            from .asym_softcap import add_logit_caps

            add_logit_caps(self)
        self.rotary = Rotary(c.rope_dims, c.rope_base, c.rope_train_len)
        self.looping = False
        self.qat = False
        self.attention_backend = "auto"
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        """Upstream's draws in upstream's order (#1855 `_init_weights`), so one torch.manual_seed gives the same
        weights: Q, K and V of every layer in one loop, every MLP up matrix in a second; O and MLP down zero."""
        c, n = self.config, self.config.num_layers
        nn.init.normal_(self.tok_emb.weight, std=c.tied_embed_init_std)
        for i in range(n):
            nn.init.orthogonal_(self.qo_bank[i])
            nn.init.orthogonal_(self.kv_bank[i])
            nn.init.orthogonal_(self.kv_bank[n + i])
        for i in range(n):
            nn.init.orthogonal_(self.mlp_up_bank[i])
        self.qo_bank[n:].zero_()
        self.mlp_down_bank.zero_()
        if not c.tie_embeddings:
            self.lm_head.weight.zero_()
        if c.smear_gate:
            self.smear_gate.weight.zero_()
        if c.bigram_buckets:
            self.bigram.reset_parameters()
        if c.value_embed_layers:
            self.value_embed.reset_parameters()
        self._round_through_bf16()

    @torch.no_grad()
    def _round_through_bf16(self):
        """Upstream builds the model as GPT(h).bfloat16() and then restores fp32 storage (restore_fp32_params), so
        every float parameter and buffer starts bf16-rounded (1.1 becomes 1.1015625; RoPE's inverse frequencies
        too) and the token embedding stays bf16 (`embed_bf16`)."""
        for p in self.parameters():
            p.copy_(p.to(torch.bfloat16))
        self.rotary.inv_freq.copy_(self.rotary.inv_freq.to(torch.bfloat16))
        if self.config.embed_bf16:
            self.tok_emb.weight.data = self.tok_emb.weight.data.to(torch.bfloat16)

    # ----- structure -----
    def layer_order(self) -> tuple[list[int], list[int]]:
        """(encoder, decoder) layer indices for the current `looping` state."""
        return layer_orders(self.config, self.looping)

    def virtual_layers(self) -> list[int]:
        """Physical layer of every application in order; an adapter slot is a position in this list."""
        enc, dec = self.layer_order()
        return enc + dec

    @property
    def attention_backend(self) -> str:
        """ "auto" or a name from pgolf.attention.BACKENDS; resolved here, not inside a compiled forward."""
        return self._attention_backend

    @attention_backend.setter
    def attention_backend(self, name: str):
        self.set_attention(name)

    def set_attention(self, name: str, compiled: bool = False):
        """`name` as for attention_backend; `compiled` (the trainer's compiled step runs the model) orders "auto"
        (pgolf.attention.AUTO_ORDER)."""
        windowed = any(b.attn.window is not None for b in self.blocks)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        self._backends = {}
        for device in devices:
            try:
                self._backends[device] = resolve_backend(name, device, windowed, compiled)
            except PgolfError as e:
                self._backends[device] = e  # raised only if the model runs there
        self._attention_backend = name

    def backend(self, device: torch.device) -> Backend:
        """The attention backend this model runs on `device` (its `name` says which kernel "auto" chose)."""
        backend = self._backends.get(device.type)
        if backend is None:
            raise PgolfError(f"attention: device {device.type} is not supported; run on the CPU or CUDA")
        if isinstance(backend, PgolfError):
            raise backend
        return backend

    def _bank(self, p: _Pass, i: int):
        n = self.config.num_layers
        qo, kv, up, down = p.banks
        return qo[i], kv[i], kv[n + i], qo[n + i], up[i], down[i]

    # ----- forward -----
    def _attention(self, p: _Pass, i: int, slot: int, n_in: torch.Tensor, w) -> torch.Tensor:
        c, attn = self.config, self.blocks[i].attn
        q_w, k_w, v_w, o_w = w[:4]
        B, T, _ = n_in.shape
        for part in ("c_q", "c_k", "c_v"):
            _capture(p, f"blocks.{i}.attn.{part}.weight", n_in)
        q = _adapt(p, "q", slot, n_in, F.linear(n_in, q_w)).view(B, T, c.num_heads, c.head_dim)
        k = _adapt(p, "k", slot, n_in, F.linear(n_in, k_w)).view(B, T, c.num_kv_heads, c.head_dim)
        v = _adapt(p, "v", slot, n_in, F.linear(n_in, v_w))
        if p.value_embed is not None and i in c.value_embed_layers:
            v = v + p.value_embed * self.value_embed_scales[c.value_embed_layers.index(i)].to(v.dtype)
        v = v.view(B, T, c.num_kv_heads, c.head_dim)
        q = apply_partial_rope(rms_norm(q), p.cos, p.sin)
        k = apply_partial_rope(rms_norm(k), p.cos, p.sin)
        if attn.key_offset:
            from .pko import partial_key_offset

            k = partial_key_offset(k, c.rope_dims, p.starts)
        q = q * attn.q_gain.to(q.dtype)[:, None]
        y = attend(p.backend, q, k, v, p.layout, attn.window)
        if attn.use_xsa:
            y = exclusive_self_attention(y, v, getattr(attn, "xsa_alpha", None))
        if c.sparse_attn_gate:
            gate = F.linear(n_in[..., : c.gate_window], attn.attn_gate_w.to(y.dtype))
            y = y * torch.sigmoid(c.sparse_attn_gate_scale * gate)[..., None]
        y = y.reshape(B, T, c.model_dim)
        _capture(p, f"blocks.{i}.attn.proj.weight", y)
        return _adapt(p, "o", slot, n_in, F.linear(y, o_w))

    def _mlp(self, p: _Pass, i: int, slot: int, m_in: torch.Tensor, w) -> torch.Tensor:
        if self.config.fused_mlp and self.training and p.capture is None and p.adapters is None:
            return kernels.mlp(m_in, w[4], w[5], self.config.leaky_relu_slope)
        _capture(p, f"blocks.{i}.mlp.fc.weight", m_in)
        hidden = mlp_hidden(m_in, w[4], self.config.leaky_relu_slope)
        _capture(p, f"blocks.{i}.mlp.proj.weight", hidden)
        return _adapt(p, "mlp", slot, m_in, F.linear(hidden, w[5]))

    def _block(self, p: _Pass, i: int, slot: int, x, x0):
        blk, dt = self.blocks[i], x.dtype
        w = self._bank(p, i)
        mix = blk.resid_mix.to(dt)
        x = mix[0] * x + mix[1] * x0
        x = x + blk.attn_scale.to(dt) * self._attention(p, i, slot, rms_norm(x) * blk.ln_scale_factor, w)
        return x + blk.mlp_scale.to(dt) * self._mlp(p, i, slot, rms_norm(x) * blk.ln_scale_factor, w)

    def _single_lane_block(self, p: _Pass, i: int, slot: int, x, x0):
        """#1493's parallel residual: attention and MLP both read the mixed input and add to it."""
        blk, dt = self.blocks[i], x.dtype
        w = self._bank(p, i)
        mix = blk.resid_mix.to(dt)
        x = mix[0] * x + mix[1] * x0
        attn_out = self._attention(p, i, slot, rms_norm(x) * blk.ln_scale_factor, w)
        mlp_out = self._mlp(p, i, slot, rms_norm(x) * blk.ln_scale_factor, w)
        return x + blk.attn_scale.to(dt) * attn_out + blk.mlp_scale.to(dt) * mlp_out

    def _parallel_block(self, p: _Pass, i: int, slot: int, lane0, lane1, x0):
        """Attention reads lane 0 (mixed with x0), the MLP reads lane 1; both write both lanes."""
        blk, dt = self.blocks[i], lane0.dtype
        w = self._bank(p, i)
        mix = blk.resid_mix.to(dt)
        attn_in = rms_norm(mix[0] * lane0 + mix[1] * x0) * blk.ln_scale_factor
        attn_out = blk.attn_scale.to(dt) * self._attention(p, i, slot, attn_in, w)
        mlp_out = blk.mlp_scale.to(dt) * self._mlp(p, i, slot, rms_norm(lane1) * blk.ln_scale_factor, w)
        resid, post = self.parallel_resid_lambdas[i].to(dt), self.parallel_post_lambdas[i].to(dt)
        lane0 = resid[0] * lane0 + post[0, 0] * attn_out + post[1, 0] * mlp_out
        lane1 = resid[1] * lane1 + post[0, 1] * attn_out + post[1, 1] * mlp_out
        return lane0, lane1

    def _skip(self, j: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """U-Net skip j into x: gated (lerp by sigmoid(gate)), or #1019's plain sum."""
        if not self.config.skip_gates:
            return x + skip
        return torch.lerp(skip, x, torch.sigmoid(self.skip_gates[j].to(x.dtype)))

    def _carry_stops(self, ids: torch.Tensor, layout: DocLayout) -> torch.Tensor:
        """(B, T) bool: positions where the per-dimension smear and the key offset take nothing from the position
        before: each document's BOS, or with cross_document each attention segment's first position (#1512's rows
        and windows run across documents and start from zeros / their own key)."""
        if not self.config.cross_document:
            return ids == BOS_ID
        from .cross_document import segment_starts

        return segment_starts(layout.doc_ids)

    def _embed(self, ids: torch.Tensor, dtype, starts: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tok_emb(ids).to(dtype)
        if self.config.bigram_buckets:
            x = x + self.bigram(ids, dtype, self.qat and self.training)
        if self.config.smear_per_dim:  # #1019: the norm first, then the smear
            from .embeds import smear_per_dim

            return smear_per_dim(rms_norm(x), self.smear_dim_gate, starts)
        if self.config.smear_gate:
            # x_t += lambda * sigmoid(W x_t[:window]) * x_{t-1}, never carried into a document's BOS
            g = self.smear_lambda.to(dtype) * torch.sigmoid(
                F.linear(x[:, 1:, : self.config.gate_window], self.smear_gate.weight.to(dtype))
            )
            not_bos = (ids[:, 1:] != BOS_ID).to(dtype).unsqueeze(-1)
            x = torch.cat([x[:, :1], x[:, 1:] + g * x[:, :-1] * not_bos], dim=1)
        return rms_norm(x)

    def layout(self, ids: torch.Tensor, cu_seqlens=None, max_seqlen=None) -> DocLayout:
        """Where the documents of a (B, T) batch lie, for this model's attention backend on ids' device (see
        forward's cu_seqlens and max_seqlen). The trainer builds it before the compiled step and passes it in: with
        the flex block mask built inside the training graph, rows-packed training on an H200 went NaN at step 3
        (the same builder compiled alone gives eager's masks; bench/RESULTS.md)."""
        windows = {b.attn.window for b in self.blocks}
        if self.config.cross_document:  # BOS is no boundary: causal within each row, or each max_seqlen piece
            from .cross_document import window_offsets

            cu_seqlens = window_offsets(ids.shape, max_seqlen, ids.device)
        return build_layout(ids, self.backend(ids.device), windows, cu_seqlens, max_seqlen)

    def hidden(
        self,
        ids: torch.Tensor,
        capture=None,
        adapters=None,
        cu_seqlens=None,
        max_seqlen=None,
        layout: DocLayout | None = None,
    ) -> torch.Tensor:
        """Final-norm output (B, T, d) in the compute dtype (bf16 on CUDA, fp32 on CPU)."""
        c = self.config
        dtype = torch.bfloat16 if ids.is_cuda else torch.float32
        if layout is None:
            layout = self.layout(ids, cu_seqlens, max_seqlen)
        elif cu_seqlens is not None or max_seqlen is not None:
            raise ValueError("pass the document cuts (cu_seqlens, max_seqlen) or a layout built from them, not both")
        cos, sin = self.rotary(ids.size(1), ids.device, dtype)
        qat = self.qat and self.training
        if qat:
            from .qat import fake_quant_int6
        banks = tuple((fake_quant_int6(getattr(self, b)) if qat else getattr(self, b)).to(dtype) for b in BANKS)
        starts = self._carry_stops(ids, layout) if c.partial_key_offset or c.smear_per_dim else None
        ve = self.value_embed(ids, dtype, qat) if c.value_embed_layers else None
        p = _Pass(self.backend(ids.device), layout, banks, cos, sin, capture, adapters, starts, ve)
        x = x0 = self._embed(ids, dtype, starts)
        enc, dec = self.layer_order()
        skips = []
        for slot, i in enumerate(enc):
            x = self._block(p, i, slot, x, x0)
            skips.append(x)
        psl = c.parallel_start_layer
        lanes = psl is not None and c.parallel_residual == "lanes"
        lane0 = lane1 = None
        for j, i in enumerate(dec):
            slot = len(enc) + j
            if lane0 is None and lanes and i >= psl:
                lane0 = lane1 = x
            if j < self.skip_weights.size(0) and skips:
                skip = self.skip_weights[j].to(dtype) * skips.pop()
                if lane0 is None:
                    x = self._skip(j, x, skip)
                else:
                    lane0 = self._skip(j, lane0, skip)
            if lane0 is None and psl is not None and i >= psl:
                x = self._single_lane_block(p, i, slot, x, x0)
            elif lane0 is None:
                x = self._block(p, i, slot, x, x0)
            else:
                lane0, lane1 = self._parallel_block(p, i, slot, lane0, lane1, x0)
        if lane0 is not None:
            x = 0.5 * (lane0 + lane1)
        return rms_norm(x)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """Pre-softcap logits in h's dtype (tied head: h @ tok_emb^T)."""
        head = self.tok_emb.weight if self.config.tie_embeddings else self.lm_head.weight
        return F.linear(h, head.to(h.dtype))

    def _project(self, h: torch.Tensor, capture, adapters) -> torch.Tensor:
        """Pre-softcap logits in fp32, the head's input captured and its adapter added."""
        if capture is not None:
            name = "tok_emb.weight" if self.config.tie_embeddings else "lm_head.weight"
            capture(name, h.detach().reshape(-1, h.size(-1)))
        logits = self._head(h).float()
        if adapters is not None:
            delta = adapters("head", 0, h)
            if delta is not None:
                logits = logits + delta.float()
        return logits

    def forward(
        self,
        ids,
        targets=None,
        *,
        reduction: str = "mean",
        capture=None,
        adapters=None,
        cu_seqlens=None,
        max_seqlen=None,
        layout=None,
    ):
        """Softcapped logits (B, T, V) fp32, or with targets the CE loss (mean, or (B, T) for "none").

        capture(name, rows): input rows (N, in) of every quantized matrix, on every application.
        adapters(kind, slot, x): kind in ADAPTER_KINDS, slot = position in virtual_layers() (0 for "head");
        a returned tensor is added to that output (q/k/v/o: x = normed block input; mlp: normed MLP input;
        head: the final hidden, added to the logits before the softcap).
        cu_seqlens: pgolf.attention.segment_offsets(ids[, max_len]) on ids' device, when the caller made the cuts
        already; every attention backend then attends within those segments. max_seqlen: their longest (default
        the row length). layout: self.layout(ids, cu_seqlens, max_seqlen), built ahead instead.
        """
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        h = self.hidden(
            ids, capture=capture, adapters=adapters, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, layout=layout
        )
        if targets is None:
            return self.logits(h, capture, adapters)
        if self.config.fused_ce and self.training and capture is None and adapters is None:
            return kernels.softcapped_ce(self._head(h), targets, self.config.logit_softcap, reduction)
        return cross_entropy(self.logits(h, capture, adapters), targets, reduction)

    def logits(self, h: torch.Tensor, capture=None, adapters=None) -> torch.Tensor:
        """Softcapped logits (..., V) fp32 of final hidden states h (..., d): the head alone, so a caller that
        needs a few positions of a window (TTT chunks) projects only those."""
        logits = self._project(h, capture, adapters)
        if self.config.asym_logit_rescale and not self.training:  # pgolf.asym_softcap ships where the option is on
            from .asym_softcap import asym_softcap

            return asym_softcap(logits, self.softcap_pos.float(), self.softcap_neg.float())
        return softcap(logits, self.config.logit_softcap)

    # ----- optimizer groups and the unbanked view -----
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """matrix: the 3-D banks (Muon); embed: token embedding (and an untied head), and #1019's BigramHash and
        value-embedding tables (its token group); scalar: the rest (AdamW) but the learnable logit caps, which act
        only at eval and, as upstream (#1923 lineage), sit in no group."""
        matrix = [getattr(self, b) for b in BANKS]
        embed = [self.tok_emb.weight] + ([] if self.config.tie_embeddings else [self.lm_head.weight])
        embed += [m.embed.weight for m in (getattr(self, "bigram", None), getattr(self, "value_embed", None)) if m]
        caps = [self.softcap_pos, self.softcap_neg] if self.config.asym_logit_rescale else []
        taken = {id(t) for t in matrix + embed + caps}
        return {"matrix": matrix, "embed": embed, "scalar": [t for t in self.parameters() if id(t) not in taken]}

    def _unbanked_matrices(self) -> dict[str, tuple[str, int]]:
        """Unbanked matrix name -> (bank, index in bank)."""
        n, names = self.config.num_layers, {}
        for i in range(n):
            names[f"blocks.{i}.attn.c_q.weight"] = ("qo_bank", i)
            names[f"blocks.{i}.attn.c_k.weight"] = ("kv_bank", i)
            names[f"blocks.{i}.attn.c_v.weight"] = ("kv_bank", n + i)
            names[f"blocks.{i}.attn.proj.weight"] = ("qo_bank", n + i)
            names[f"blocks.{i}.mlp.fc.weight"] = ("mlp_up_bank", i)
            names[f"blocks.{i}.mlp.proj.weight"] = ("mlp_down_bank", i)
        return names

    def unbanked_state_dict(self) -> dict[str, torch.Tensor]:
        """tok_emb.weight, the per-layer matrices by upstream's names, then every small tensor by module path."""
        state = {name: getattr(self, bank)[k].detach().clone() for name, (bank, k) in self._unbanked_matrices().items()}
        for name, t in self.state_dict().items():
            if name not in BANKS:
                state[name] = t.detach().clone()
        return dict(sorted(state.items(), key=lambda kv: kv[0] != "tok_emb.weight"))

    @torch.no_grad()
    def load_unbanked(self, state: dict[str, torch.Tensor]):
        """Inverse of unbanked_state_dict (exact): re-banks the matrices, loads the small tensors."""
        matrices = self._unbanked_matrices()
        expected = {n: t.shape for n, t in self.state_dict().items() if n not in BANKS}
        for name, (bank, k) in matrices.items():
            expected[name] = getattr(self, bank).shape[1:]
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise PgolfError(
                f"unbanked state: missing {missing[:6]}, unexpected {unexpected[:6]}; the state does not match "
                "this ModelConfig (load it with the config saved next to it)"
            )
        wrong = [f"{n} {tuple(state[n].shape)} != {tuple(s)}" for n, s in expected.items() if state[n].shape != s]
        if wrong:
            raise PgolfError(f"unbanked state: wrong shapes {wrong[:4]}; load it with the config saved next to it")
        for name, (bank, k) in matrices.items():
            getattr(self, bank)[k].copy_(state[name])
        small = {n: state[n] for n in expected if n not in matrices}
        small.update({b: getattr(self, b) for b in BANKS})
        self.load_state_dict(small, strict=True)
        return self

    @classmethod
    def from_unbanked(cls, config, state: dict[str, torch.Tensor]) -> "GPT":
        return cls(config).load_unbanked(state)


def config_dict(config: ModelConfig) -> dict:
    """The ModelConfig as saved in model.pt and quantized.pt (plain JSON-able values)."""
    return dataclasses.asdict(config)


def load_trained(path, device="cpu") -> tuple["GPT", dict]:
    """The EMA model of a model.pt ({"config", "state_dict" by unbanked names, "train"}) on `device`, and its config."""
    checkpoint = load_torch(path, "model.pt", "train")
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        raise PgolfError(f"{path}: lacks config/state_dict; re-run the train stage that writes it")
    config = ModelConfig.from_dict(checkpoint["config"], f"{path}: config")
    return GPT.from_unbanked(config, checkpoint["state_dict"]).to(device), dataclasses.asdict(config)
