"""Document-causal attention with the backend chosen at run time.

A row of token ids may hold several documents, each starting at a BOS token; a query attends only to keys of
its own document at or before its position (and, with a sliding window, at most `window` positions back:
FlashAttention's `window_size=(window, 0)`). Backends, all computing the same function:

- `fa3`: FlashAttention-3 (`flash_attn_interface.flash_attn_varlen_func`), CUDA, where it is installed (built from
  FlashAttention's hopper/ sources; PyPI has no wheel that installs on a plain machine, so pgolf has no extra for it);
- `flex`: FlexAttention with a document-causal block mask (compiled on CUDA with FLEX_KERNEL_OPTIONS, unfused on
  CPU); one kernel is compiled per input shape;
- `fa4`: FlashAttention-4 (flash-attn-4's CuTe-DSL kernels, pgolf.fa4), CUDA, where it is installed; never chosen
  by "auto" (`model.attention: fa4` asks for it);
- `flash_attn`: flash-attn 2 (`flash_attn.flash_attn_varlen_func`), CUDA;
- `varlen`: PyTorch's FA2-based `torch.nn.attention.varlen.varlen_attn` (torch >= 2.9), CUDA;
- `cudnn`: cuDNN's fused attention over the packed stream (pgolf.cudnn_attention: `aten._cudnn_attention_forward`
  with cumulative sequence lengths, the kernel behind nested-tensor SDPA), CUDA, no sliding window; never chosen by
  "auto": bench/attention_backends.py checks it on the card, and torch 2.11's packed backward fails that check
  (bench/RESULTS.md); `model.attention: cudnn` asks for it;
- `sdpa`: `scaled_dot_product_attention` with an explicit boolean mask (the CPU default and the reference).

"auto" takes the first one available in AUTO_ORDER. Inside the compiled training step flex comes before the FA2
kernels: the record model's step ran faster with it than with `varlen`. Everywhere else (eager
forwards: Hessians, diagnostic eval, TTT's global phases; TTT's dynamic-shape chunk graph) the varlen kernels come
first: they take every shape as it comes, where eager flex first compiled for each new shape and
then ran no faster (figures in bench/RESULTS.md).

The varlen backends flatten the batch into one packed stream cut at every BOS and row start
(`segment_offsets`). Built inside the model, the cuts come from a `nonzero`, so choosing one of them lets
torch.compile capture data-dependent shapes; the trainer passes them in, built on the CPU.
"""

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import PgolfError
from .shards import BOS_ID

BACKENDS = ("fa3", "fa4", "flash_attn", "varlen", "cudnn", "flex", "sdpa")
AUTO_ORDER = {  # on CUDA, by whether the caller runs the model inside the compiled training step; the CPU takes sdpa
    "compiled": ("fa3", "flex", "flash_attn", "varlen", "sdpa"),
    "eager": ("fa3", "flash_attn", "varlen", "flex", "sdpa"),
}
VARLEN_BACKENDS = ("fa3", "fa4", "flash_attn", "varlen", "cudnn")
_FLASH_MODULES = {"fa3": "flash_attn_interface", "flash_attn": "flash_attn"}


@dataclass(frozen=True)
class Backend:
    """A resolved backend: its name and, for the varlen kinds, the kernel entry point."""

    name: str
    varlen_fn: Callable | None = None
    torch_varlen_window: bool = False  # torch's varlen_attn takes window_size (newer) rather than is_causal
    torch_varlen_gqa: bool = False


def _import_flash(name: str):
    try:
        return importlib.import_module(_FLASH_MODULES[name]).flash_attn_varlen_func
    except (ImportError, AttributeError):
        return None


def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _try_backend(name: str, cuda: bool, windowed: bool) -> Backend | None:
    if name in _FLASH_MODULES:  # a CUDA kernel in practice; importable only where it is installed
        fn = _import_flash(name)
        return Backend(name, fn) if fn is not None else None
    if name == "varlen":
        fn = _torch_varlen() if cuda else None
        if fn is None:
            return None
        params = inspect.signature(fn).parameters
        if windowed and "window_size" not in params:  # torch 2.9-2.10 take is_causal only
            return None
        return Backend(name, fn, "window_size" in params, "enable_gqa" in params)
    if name == "fa4":
        from . import fa4

        return Backend(name, fa4.varlen_attention) if cuda and fa4.kernels() is not None else None
    if name == "flex":
        return Backend(name) if _flex_available() else None
    if name == "cudnn":  # pgolf.cudnn_attention ships only in a script whose model.attention names it
        from .cudnn_attention import cudnn_backend

        return cudnn_backend(cuda, windowed)
    return Backend(name)


def resolve_backend(requested: str, device, windowed: bool = False, compiled: bool = False) -> Backend:
    """`requested` is a name from BACKENDS or "auto" (CUDA: the first available of AUTO_ORDER; CPU: sdpa).
    `windowed` says whether some layer uses a sliding window; `compiled`, whether the compiled training step runs it."""
    if requested not in BACKENDS + ("auto",):
        raise PgolfError(f"attention backend {requested!r}: unknown; use one of {('auto',) + BACKENDS}")
    cuda = torch.device(device).type == "cuda"
    if requested != "auto":
        candidates = (requested,)
    else:
        candidates = AUTO_ORDER["compiled" if compiled else "eager"] if cuda else ("sdpa",)
    for name in candidates:
        backend = _try_backend(name, cuda, windowed)
        if backend is not None:
            if name in VARLEN_BACKENDS:
                torch._dynamo.config.capture_dynamic_output_shape_ops = True
            return backend
    why = ""
    if requested == "cudnn" and cuda and not windowed:
        from .cudnn_attention import cudnn_probe

        why = f" (cuDNN probe: {cudnn_probe()})"
    raise PgolfError(
        f"attention backend {requested!r} is not usable on {torch.device(device).type} with torch "
        f"{torch.__version__}{why}; install that kernel (FlashAttention-3, flash-attn-4 or flash-attn 2), use a CUDA device, or set it to 'auto'"
    )


@dataclass
class DocLayout:
    """Where documents begin, in the form the chosen backend wants; built once per forward."""

    doc_ids: torch.Tensor  # (B, T) int32: document index within each row
    cu_seqlens: torch.Tensor | None = None  # (n_docs + 1,) int32 over the flattened batch (varlen backends)
    max_seqlen: int = 0
    masks: dict = field(default_factory=dict)  # window (None = full) -> flex BlockMask or (B, 1, T, T) bool


def document_ids(ids: torch.Tensor) -> torch.Tensor:
    """Document index of every token: a BOS starts a new document (tokens before the first BOS are doc 0)."""
    return torch.cumsum((ids == BOS_ID).to(torch.int32), dim=1, dtype=torch.int32)


def document_mask(doc_ids: torch.Tensor, window: int | None) -> torch.Tensor:
    """(B, 1, T, T) bool: query t may attend key s (same document, s <= t, t - s <= window)."""
    T = doc_ids.size(1)
    pos = torch.arange(T, device=doc_ids.device)
    allowed = pos[None, :] <= pos[:, None]
    if window is not None:
        allowed = allowed & (pos[:, None] - pos[None, :] <= window)
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (same_doc & allowed)[:, None]


FLEX_BLOCK = 128  # FlexAttention's block size, queries and keys


def _flex_block_mask(doc_ids: torch.Tensor, window: int | None):
    """The document-causal mask (same segment, key <= query, within the window) as a FlexAttention BlockMask, its
    blocks classified from the segment ids of each block's first and last token. Segment ids never decrease along a
    row, so a key block before a query block shares a segment with it exactly when its last id equals the query
    block's first, and is full when all four ids agree. create_block_mask would evaluate every (query, key) pair:
    9.7e9 of them for a micro-batch packed as one 98,304-token row."""
    from torch.nn.attention.flex_attention import BlockMask

    def mask_mod(b, h, q, kv):
        keep = (kv <= q) & (doc_ids[b, q] == doc_ids[b, kv])
        return keep & (q - kv <= window) if window is not None else keep

    B, T = doc_ids.shape
    device = doc_ids.device
    starts = torch.arange(0, T, FLEX_BLOCK, device=device)
    ends = (starts + FLEX_BLOCK).clamp(max=T) - 1
    first, last = doc_ids[:, starts], doc_ids[:, ends]  # (B, blocks)
    q_start, q_end, k_start, k_end = starts[:, None], ends[:, None], starts[None, :], ends[None, :]
    nearest, farthest = q_start - k_end, q_end - k_start  # the closest and farthest (query, key) distance
    any_kept = (k_start <= q_start) & (last[:, None, :] >= first[:, :, None])
    single = first == last  # the block lies inside one segment
    same = single[:, :, None] & single[:, None, :] & (first[:, :, None] == first[:, None, :])
    whole = (k_end - k_start == FLEX_BLOCK - 1) & (q_end - q_start == FLEX_BLOCK - 1)  # no tail block is full
    all_kept = (k_start < q_start) & same & whole
    if window is not None:
        any_kept &= nearest <= window
        all_kept &= farthest <= window
    partial = any_kept & ~all_kept

    def blocks(kept):  # (B, 1, q blocks) counts and (B, 1, q blocks, k blocks) indices, kept blocks first
        order = torch.argsort((~kept).to(torch.int8), dim=-1, stable=True)
        return kept.sum(-1, dtype=torch.int32)[:, None], order.to(torch.int32)[:, None]

    return BlockMask.from_kv_blocks(*blocks(partial), *blocks(all_kept), BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(T, T))  # fmt: skip


def segment_offsets(ids: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """cu_seqlens (n_segments + 1,) int32 of a (B, T) batch flattened: a segment starts at every BOS and at every
    row start, and the last entry is B * T. With `max_len`, a segment longer than that is split every max_len
    tokens from its start (the record loader's rule for a micro-batch packed as one (1, N) row). The trainer builds
    it on the CPU (no device-to-host sync for the `nonzero`, and a plain input size that compiles once with a
    dynamic length)."""
    B, T = ids.shape
    starts = ids == BOS_ID
    starts[:, 0] = True
    offsets = torch.nonzero(starts.flatten()).flatten().to(torch.int32)
    total = torch.full((1,), B * T, dtype=torch.int32, device=ids.device)
    if max_len is not None:
        lengths = torch.diff(offsets, append=total)
        pieces = (lengths + max_len - 1) // max_len
        first = torch.repeat_interleave(offsets, pieces)  # each piece's segment start
        piece_of_segment = torch.arange(len(first), device=ids.device) - torch.repeat_interleave(
            torch.cumsum(pieces, 0) - pieces, pieces
        )
        offsets = (first + piece_of_segment * max_len).to(torch.int32)
    return torch.cat([offsets, total])


def segment_ids(cu_seqlens: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """(B, T) int32 segment index of every token of a (B, T) batch cut at `cu_seqlens` (over the flattened batch).
    A scatter and a cumsum: Inductor's CPU flex template refused the same ids made by bucketize inside a mask."""
    starts = torch.zeros(B * T, dtype=torch.int32, device=cu_seqlens.device)
    starts[cu_seqlens[1:-1].long()] = 1
    return torch.cumsum(starts, 0, dtype=torch.int32).view(B, T)


def build_layout(
    ids: torch.Tensor, backend: Backend, windows, cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None
) -> DocLayout:
    """Document boundaries of a (B, T) batch for `backend`; `windows` = the set of windows the layers use;
    `cu_seqlens` = cuts made ahead (segment_offsets(ids), or its max_len split), on ids' device: every backend
    attends within those segments; `max_seqlen` = their longest (default T; the varlen kernels size their grid
    by it, so a packed (1, N) row passes its split length)."""
    B, T = ids.shape
    doc_ids = document_ids(ids) if cu_seqlens is None else segment_ids(cu_seqlens, B, T)
    layout = DocLayout(doc_ids)
    if backend.name in VARLEN_BACKENDS:
        layout.cu_seqlens = segment_offsets(ids) if cu_seqlens is None else cu_seqlens
        layout.max_seqlen = max_seqlen or T
    elif backend.name == "flex":
        layout.masks = {w: _flex_block_mask(doc_ids, w) for w in windows}
    else:
        layout.masks = {w: document_mask(doc_ids, w) for w in windows}
    return layout


_compiled_flex = None
# Tiles of 32 x 128 (dK/dV) and 128 x 32 (dQ) in the backward, 4 warps and 3 stages in both passes: forward +
# backward of the record's micro-batch ran faster than with torch's defaults, forward output bit-identical
# (bench/flex_options.py; figures in bench/RESULTS.md).
FLEX_KERNEL_OPTIONS = {
    "BLOCK_M1": 32,
    "BLOCK_N1": 128,
    "BLOCK_M2": 128,
    "BLOCK_N2": 32,
    "num_warps": 4,
    "num_stages": 3,
}


def _flex(q, k, v, block_mask):
    """FlexAttention; compiled once on CUDA (the unfused eager path materializes every score)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    if q.is_cuda and not torch.compiler.is_compiling():
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        fn = _compiled_flex
    options = FLEX_KERNEL_OPTIONS if q.is_cuda else None  # the CPU runs the unfused reference, no kernel
    return fn(q, k, v, block_mask=block_mask, enable_gqa=k.size(1) != q.size(1), kernel_options=options)


def attend(backend: Backend, q, k, v, layout: DocLayout, window: int | None = None) -> torch.Tensor:
    """Causal attention within documents. q (B, T, H, D), k/v (B, T, Hkv, D) -> (B, T, H, D); scale 1/sqrt(D)."""
    B, T, H, D = q.shape
    if backend.name in VARLEN_BACKENDS:
        qf, kf, vf = (t.reshape(B * T, t.size(2), D) for t in (q, k, v))
        cu, n = layout.cu_seqlens, layout.max_seqlen
        left = -1 if window is None else window
        if backend.name == "varlen":
            if not backend.torch_varlen_gqa and kf.size(1) != H:
                kf, vf = (t.repeat_interleave(H // t.size(1), dim=1) for t in (kf, vf))
            extra = {"enable_gqa": True} if backend.torch_varlen_gqa else {}
            if backend.torch_varlen_window:
                extra["window_size"] = (left, 0)
            else:
                extra["is_causal"] = True
            y = backend.varlen_fn(qf, kf, vf, cu, cu, n, n, **extra)
        elif backend.name in ("cudnn", "fa4"):  # wrapped in their modules (pgolf.cudnn_attention, pgolf.fa4)
            y = backend.varlen_fn(qf, kf, vf, cu, n, window)
        else:
            y = backend.varlen_fn(
                qf,
                kf,
                vf,
                cu_seqlens_q=cu,
                cu_seqlens_k=cu,
                max_seqlen_q=n,
                max_seqlen_k=n,
                causal=True,
                window_size=(left, 0),
            )
            if isinstance(y, tuple):  # some FA3 releases also return the log-sum-exp
                y = y[0]
        return y.reshape(B, T, H, D)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if backend.name == "flex":
        y = _flex(qt, kt, vt, layout.masks[window])
    else:
        y = F.scaled_dot_product_attention(
            qt, kt, vt, attn_mask=layout.masks[window], enable_gqa=kt.size(1) != qt.size(1)
        )
    return y.transpose(1, 2)
