"""#1512's size fitting: zero the int6 codes that matter least until the lzma-compressed state fits a target.

    blob = lzma_pack(state)                                   # b"PLZM", its decoded size, lzma preset 9 of torch.save
    state = lzma_unpack(blob, source)                         # the inverse (exact)
    order = prune_order(state)                                # (name, flat index) of every nonzero int6 code
    n, pruned = prune_to_target(state, target_bytes, size)   # fewest zeroed codes with size(pruned) <= target
    blob, n = pack_pruned(state, target_bytes)              # what pgolf.pack writes for lzma_pruned

A code's cost is |q| x its row's scale, the magnitude its weight loses when zeroed; codes go in increasing cost,
ties in tensor order, then row-major. The search is #1512's: size(0) first, then a binary search over the count
(it assumes the size falls as codes are zeroed, which lzma makes nearly but not strictly true, as upstream's did).

Format: b"PLZM", the uint64 LE size of the torch-saved state, then #1512's bytes (lzma.compress at preset 9, an .xz
stream). The 12 header bytes are pgolf's: the reader decodes no further than the declared size, so a corrupt or
hostile blob cannot expand without bound.
"""

import io
import lzma
import pickle
import struct
from collections.abc import Callable

import torch

from .errors import PgolfError
from .pack import LZMA_MAGIC  # one definition; pack imports this module lazily
from .quant import dequant

LZMA_PRESET = 9
HEADER = struct.Struct("<4sQ")
MAX_STATE_BYTES = 1 << 31  # a declared size beyond this is refused before decoding
REPACK = "re-run the pack stage"


def is_lzma(data: bytes) -> bool:
    return data[:4] == LZMA_MAGIC


def serialize(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def lzma_pack(state: dict) -> bytes:
    raw = serialize(state)
    return HEADER.pack(LZMA_MAGIC, len(raw)) + lzma.compress(raw, preset=LZMA_PRESET)


def lzma_decode(blob: bytes, source: str) -> bytes:
    """The torch-saved bytes of a PLZM blob, decoded no further than its declared size (which they must fill)."""
    if len(blob) < HEADER.size or not is_lzma(blob):
        raise PgolfError(
            f"{source}: not an lzma_pruned artifact (magic {blob[:4]!r}, expected {LZMA_MAGIC!r}); {REPACK}"
        )
    _, declared = HEADER.unpack_from(blob)
    if declared > MAX_STATE_BYTES:
        raise PgolfError(f"{source}: declares {declared:,} decoded bytes, over the {MAX_STATE_BYTES:,} limit; {REPACK}")
    dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    try:
        raw = dec.decompress(blob[HEADER.size :], max_length=declared + 1)
    except lzma.LZMAError as e:
        raise PgolfError(f"{source}: the lzma stream is corrupt ({e}); {REPACK}") from None
    if len(raw) > declared:
        raise PgolfError(f"{source}: the lzma stream decodes past its declared {declared:,} bytes; {REPACK}")
    if not dec.eof or len(raw) != declared or dec.unused_data:
        raise PgolfError(
            f"{source}: the lzma stream gives {len(raw):,} of {declared:,} declared bytes"
            f"{'' if dec.eof else ' and no end marker'}{' and trailing bytes' if dec.unused_data else ''}; {REPACK}"
        )
    return raw


def lzma_unpack(blob: bytes, source: str) -> dict:
    raw = lzma_decode(blob, source)
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise PgolfError(f"{source}: the lzma stream holds no quantized state ({e}); {REPACK}") from None
    if not isinstance(state, dict) or not {"tensors", "meta", "config"} <= set(state):
        raise PgolfError(f"{source}: the lzma stream holds no {{tensors, meta, config}} state; {REPACK}")
    return state


def int6_names(state: dict) -> list[str]:
    """The weights stored as int6 codes with one scale per row (GPTQ at 6 bits, without AWQ's int8 groups)."""
    return [
        n for n, how in state["meta"].items() if how.startswith(f"{dequant.GPTQ} (int6)") and dequant.AWQ not in how
    ]


def prune_order(state: dict) -> list[tuple[str, int]]:
    names, flat, costs = [], [], []
    for k, name in enumerate(int6_names(state)):
        q, scale = state["tensors"][f"{name}.q"], state["tensors"][f"{name}.scale"]
        cost = q.float().abs() * scale.float()[:, None]
        idx = torch.nonzero(q.reshape(-1), as_tuple=True)[0]
        names.append(torch.full_like(idx, k))
        flat.append(idx)
        costs.append(cost.reshape(-1)[idx])
    if not costs:
        return []
    order = torch.sort(torch.cat(costs), stable=True).indices
    which, where = torch.cat(names)[order].tolist(), torch.cat(flat)[order].tolist()
    tensor_names = int6_names(state)
    return [(tensor_names[k], i) for k, i in zip(which, where)]


def apply_pruning(state: dict, order: list[tuple[str, int]], count: int) -> dict:
    """A copy of the state with the first `count` codes of `order` set to zero."""
    tensors = dict(state["tensors"])
    touched = {name for name, _ in order[:count]}
    for name in touched:
        tensors[f"{name}.q"] = tensors[f"{name}.q"].clone()
    for name, i in order[:count]:
        tensors[f"{name}.q"].view(-1)[i] = 0
    return {**state, "tensors": tensors}


def prune_to_target(state: dict, target_bytes: int, size: Callable[[dict], int]) -> tuple[int, dict]:
    """(codes zeroed, pruned state): 0 and the state when size(state) <= target, else the binary search's count."""
    if size(state) <= target_bytes:
        return 0, state
    order = prune_order(state)
    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        if size(apply_pruning(state, order, mid)) <= target_bytes:
            hi = mid
        else:
            lo = mid + 1
    pruned = apply_pruning(state, order, lo)
    if size(pruned) > target_bytes:
        raise PgolfError(
            f"pack: zeroing all {len(order)} int6 codes still leaves {size(pruned):,} bytes, over the pruning "
            f"target of {target_bytes:,}; raise pack.prune_target_bytes or quantize to fewer bits"
        )
    return lo, pruned


def pack_pruned(state: dict, target_bytes: int | None) -> tuple[bytes, int]:
    """#1512's artifact: (lzma blob, int6 codes zeroed to fit target_bytes; 0 without a target)."""
    if target_bytes is None:
        return lzma_pack(state), 0
    pruned, state = prune_to_target(state, target_bytes, lambda s: len(lzma_pack(s)))
    return lzma_pack(state), pruned
