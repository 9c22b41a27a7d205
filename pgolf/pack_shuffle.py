"""#1572's artifact format, `pack.compressor: brotli_shuffle`: torch.save of {"w": tensors, "m": meta, "c": config},
byte-shuffled with stride 2 (b"BSHF", the stride byte, then every even byte followed by every odd byte), then brotli
quality 11. pgolf.pack writes and reads it through pack_as and unpack_artifact; a separate module, so that a
submission script whose config packs with lrzip_groups does not carry it (pgolf.codepack.OPTIONAL).
"""

import io
import pickle

import brotli
import numpy as np
import torch

from .errors import PgolfError
from .pack import REPACK, _check_state

SHUFFLE_MAGIC = b"BSHF"
SHUFFLE_STRIDE = 2


def byte_shuffle(data: bytes, stride: int = SHUFFLE_STRIDE) -> bytes:
    """b"BSHF" + stride byte + the bytes at offsets 0, stride, 2*stride, ..., then 1, 1+stride, ...: the low and
    high bytes of fp16 scales land in separate runs. Shorter than the stride: returned as is (as #1572 does)."""
    if stride <= 1 or len(data) < stride:
        return data
    src = np.frombuffer(data, np.uint8)
    return SHUFFLE_MAGIC + bytes([stride]) + np.concatenate([src[k::stride] for k in range(stride)]).tobytes()


def byte_unshuffle(data: bytes) -> bytes:
    if len(data) < 5 or data[:4] != SHUFFLE_MAGIC:
        return data
    stride, payload = data[4], np.frombuffer(data, np.uint8, offset=5)
    if stride < 2:
        return payload.tobytes()
    out, at, n = np.empty_like(payload), 0, payload.size
    for k in range(stride):
        count = n // stride + (k < n % stride)
        out[k::stride] = payload[at : at + count]
        at += count
    return out.tobytes()


def pack_brotli_shuffle(quantized_state: dict) -> bytes:
    tensors, meta, config = _check_state(quantized_state)
    buf = io.BytesIO()
    torch.save({"w": tensors, "m": meta, "c": config}, buf)
    return brotli.compress(byte_shuffle(buf.getvalue()), quality=11)


def unpack_brotli_shuffle(data: bytes, source: str = "brotli blob") -> dict:
    try:
        raw = byte_unshuffle(brotli.decompress(data))
    except brotli.error as e:
        raise PgolfError(
            f"{source}: no PGRP or PLZM magic ({bytes(data[:4])!r}), and not a brotli_shuffle stream either ({e}); {REPACK}"
        ) from None
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise PgolfError(f"{source}: the brotli stream holds no quantized state ({e}); {REPACK}") from None
    if not isinstance(state, dict) or set(state) != {"w", "m", "c"}:
        raise PgolfError(f"{source}: the brotli stream holds no {{w, m, c}} state; {REPACK}")
    return {"tensors": state["w"], "meta": state["m"], "config": state["c"]}
