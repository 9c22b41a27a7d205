"""Per-group lrzip packing of a quantized state into a PGRP container (record-stack.md §7).

    python -m pgolf.pack --quantized results/<name>/seed<seed>/quant/<preset>/quantized.pt \
        --out results/<name>/seed<seed>/quant/<preset>/model.pgrp

writes model.pgrp and, beside it, pack.json (bytes per stream, seconds, cores, sha256, brotli-only baseline).
With `--config` naming a preset whose pack.format is lzma, model.pgrp holds #1512's artifact instead: lzma of the
torch-saved state, pruned to pack.prune_target_bytes (pgolf.prune); unpack and stream_sizes read either.

Container: b"PGRP", uint32 LE stream count (9), one uint32 LE length per stream, then the streams in the order
of STREAMS: 7 lrzip groups, the brotli remainder, the brotli row permutations (an empty stream is a missing
group). A group concatenates the int8 matrices of one role over layers 0..n: rows of the hot groups reordered
by a greedy L1 nearest-neighbour chain, each matrix transposed (column-major bytes). The remainder holds every
other tensor plus meta, config and the group shapes: a uint32 LE length, a JSON header, then raw tensor bytes
(no pickle), so a .pgrp is self-describing.
"""

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import brotli
import numpy as np
import torch

from . import prune
from .config import load_stage_config
from .errors import PgolfError
from .io import load_torch, read_json, write_bytes, write_json
from .quant.preset import PackSpec, Preset

MAGIC = b"PGRP"
GROUPS = ("tok_emb", "attn.c_k", "attn.c_q", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")
STREAMS = GROUPS + ("remainder", "perms")
HOT = frozenset({"tok_emb", "attn.c_q", "mlp.fc"})
BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(attn\.c_q|attn\.c_k|attn\.c_v|attn\.proj|mlp\.fc|mlp\.proj)\.weight\.q")
REPACK = "re-run the pack rule (delete the .pgrp to force it)"


def _group_slot(name: str):
    """(group index, layer) for a name that belongs to a group by name, else None."""
    if name == "tok_emb.weight.q":
        return 0, 0
    m = BLOCK_NAME.fullmatch(name)
    return (GROUPS.index(m.group(2)), int(m.group(1))) if m else None


# --- greedy L1 nearest-neighbour row order -------------------------------------------------------------------


def pairwise_l1(rows: torch.Tensor, device=None, block_rows=None) -> np.ndarray:
    """All row-to-row L1 distances as int32, computed in blocks of the upper triangle (GPU when present).

    The rows are integers, so float32 partial sums stay exact below 2**24 whatever order cdist adds them in.
    """
    n, d = rows.shape
    if 255 * d >= 1 << 24:
        raise PgolfError(f"row length {d}: L1 distances of int8 rows this long are not exact in float32")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    x = rows.to(device=device, dtype=torch.float32)
    block = block_rows or max(1, (1 << 22) // max(n, 1))  # ~16 MiB of distances per block
    dist = np.empty((n, n), np.int32)
    for i in range(0, n, block):
        part = torch.cdist(x[i : i + block], x[i:], p=1).to(torch.int32).cpu().numpy()
        dist[i : i + block, i:] = part
        dist[i:, i : i + block] = part.T
    return dist


def nn_chain(rows: torch.Tensor, device=None, block_rows=None) -> np.ndarray:
    """Start at row 0, then repeatedly take the unused row nearest (L1) to the last one; ties go to the lowest index."""
    n = rows.shape[0]
    order = np.zeros(n, np.int64)
    if n == 0:
        return order
    dist = pairwise_l1(rows, device, block_rows)
    used = np.zeros(n, bool)
    used[0] = True
    far = np.iinfo(np.int32).max
    cur = 0
    for k in range(1, n):
        cur = int(np.where(used, far, dist[cur]).argmin())  # argmin returns the first minimum
        used[cur] = True
        order[k] = cur
    return order


# --- lrzip ----------------------------------------------------------------------------------------------------


def lrzip_binary() -> str:
    path = shutil.which("lrzip")
    if path is None:
        raise PgolfError(
            "lrzip: binary not found on PATH; install it (apt-get install lrzip, or conda install -c conda-forge lrzip)"
        )
    return path


def _lrzip(args, data: bytes, source: str) -> bytes:
    """Run lrzip on `data` written to a temp file; return the bytes of its output file."""
    with tempfile.TemporaryDirectory(prefix="pgolf-lrzip-") as tmp:
        src, dst = Path(tmp, "in"), Path(tmp, "out")
        src.write_bytes(data)
        proc = subprocess.run([lrzip_binary(), *args, "-q", "-f", "-o", str(dst), str(src)], capture_output=True)
        if proc.returncode != 0 or not dst.exists():
            tail = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-500:]
            raise PgolfError(f"{source}: lrzip {' '.join(args)} failed ({tail}); {REPACK}")
        return dst.read_bytes()


def lrzip_compress(data: bytes) -> bytes:
    return _lrzip(["-z", "-L", "9"], data, "lrzip input") if data else b""


def lrzip_decompress(data: bytes, source: str) -> bytes:
    return _lrzip(["-d"], data, source) if data else b""


# --- remainder: JSON header + raw tensor bytes ----------------------------------------------------------------


def _to_json(value, where):
    """JSON-ready copy that keeps tuples apart from lists, so the config round-trips exactly."""
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise PgolfError(f"quantized state: {where} has non-string keys; use string keys")
        return {k: _to_json(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise PgolfError(f"quantized state: {where} is a {type(value).__name__}; config values must be JSON types")


def _from_json(value):
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _encode_remainder(tensors: dict, meta: dict, config: dict, shapes: list) -> bytes:
    entries, chunks = [], []
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        entries.append([name, str(t.dtype).removeprefix("torch."), list(t.shape)])
        chunks.append(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    header = {"config": _to_json(config, "config"), "meta": meta, "groups": shapes, "tensors": entries}
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(text)) + text + b"".join(chunks)


def _decode_remainder(data: bytes, source: str):
    try:
        (size,) = struct.unpack_from("<I", data)
        header = json.loads(data[4 : 4 + size])
        offset, tensors = 4 + size, {}
        for name, dtype_name, shape in header["tensors"]:
            dtype = getattr(torch, dtype_name)
            numel = int(np.prod(shape, dtype=np.int64))
            nbytes = numel * dtype.itemsize
            if offset + nbytes > len(data):
                raise ValueError(f"tensor {name} runs past the end")
            raw = bytearray(data[offset : offset + nbytes])
            flat = torch.frombuffer(raw, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
            tensors[name] = flat.reshape(shape)
            offset += nbytes
        if offset != len(data):
            raise ValueError(f"{len(data) - offset} bytes left over")
        return header, tensors
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as e:
        raise PgolfError(f"{source}: remainder stream is corrupt ({e}); {REPACK}") from None


# --- container ------------------------------------------------------------------------------------------------


def _check_state(state) -> tuple[dict, dict, dict]:
    if not isinstance(state, dict) or set(state) != {"tensors", "meta", "config"}:
        raise PgolfError('quantized state: expected a dict with keys "tensors", "meta", "config"; re-run quantize')
    tensors, meta, config = state["tensors"], state["meta"], state["config"]
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise PgolfError('quantized state: "tensors" must map names to tensors; re-run quantize')
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise PgolfError('quantized state: "meta" must map names to strings; re-run quantize')
    if not isinstance(config, dict):
        raise PgolfError('quantized state: "config" must be a dict (the ModelConfig); re-run quantize')
    return tensors, meta, config


def _group_blob(members: list, hot: bool) -> tuple[bytes, bytes]:
    """Concatenated transposed matrices of one group, and the uint16 row orders of a hot group."""
    blob, perms = [], []
    for _, _, t in members:
        if hot:
            if t.shape[0] > 1 << 16:
                raise PgolfError(f"{t.shape[0]} rows: row orders are stored as uint16 (at most 65,536 rows)")
            order = nn_chain(t)
            t = t[torch.from_numpy(order)]
            perms.append(order.astype("<u2").tobytes())
        blob.append(t.T.contiguous().numpy().tobytes())
    return b"".join(blob), b"".join(perms)


def _brotli(data: bytes) -> bytes:
    return brotli.compress(data, quality=11, lgwin=24)


def pack(quantized_state: dict) -> bytes:
    """The PGRP blob of a quantized state {"tensors", "meta", "config"}."""
    tensors, meta, config = _check_state(quantized_state)
    lrzip_binary()
    members = [[] for _ in GROUPS]
    remainder = {}
    for name, t in tensors.items():
        slot = _group_slot(name)
        if slot and t.dtype == torch.int8 and t.dim() == 2:
            members[slot[0]].append((slot[1], name, t.detach().cpu()))
        else:
            remainder[name] = t
    for group in members:
        group.sort(key=lambda m: m[0])
    shapes = [[[name, *t.shape] for _, name, t in group] for group in members]
    perms = [b""] * len(GROUPS)
    with ThreadPoolExecutor(len(GROUPS) + 1) as pool:
        rest = pool.submit(lambda: _brotli(_encode_remainder(remainder, meta, config, shapes)))
        futures = [None] * len(GROUPS)
        # Cold groups first: their lrzip processes run while the chains of the hot groups are computed.
        for g in sorted(range(len(GROUPS)), key=lambda g: GROUPS[g] in HOT):
            blob, perms[g] = _group_blob(members[g], GROUPS[g] in HOT)
            futures[g] = pool.submit(lrzip_compress, blob)
        perm_bytes = b"".join(perms)
        streams = [f.result() for f in futures] + [rest.result(), _brotli(perm_bytes) if perm_bytes else b""]
    return MAGIC + struct.pack(f"<{len(streams) + 1}I", len(streams), *map(len, streams)) + b"".join(streams)


def split_streams(data: bytes, source: str = "PGRP blob") -> dict:
    """{stream name: bytes} of a blob, after checking magic, stream count and lengths."""
    if data[:4] != MAGIC:
        raise PgolfError(f"{source}: not a PGRP container (magic {data[:4]!r}, expected {MAGIC!r}); {REPACK}")
    table = 8 + 4 * len(STREAMS)
    if len(data) < table:
        raise PgolfError(f"{source}: truncated ({len(data)} bytes, shorter than the stream table); {REPACK}")
    (count,) = struct.unpack_from("<I", data, 4)
    if count != len(STREAMS):
        raise PgolfError(f"{source}: {count} streams, expected {len(STREAMS)}; {REPACK}")
    lengths = struct.unpack_from(f"<{count}I", data, 8)
    body = len(data) - table
    if sum(lengths) > body:
        raise PgolfError(f"{source}: truncated (stream table promises {sum(lengths)} bytes, {body} present); {REPACK}")
    if sum(lengths) < body:
        raise PgolfError(
            f"{source}: stream lengths add up to {sum(lengths)} bytes but {body} follow the table; {REPACK}"
        )
    streams, offset = {}, table
    for name, length in zip(STREAMS, lengths):
        streams[name] = data[offset : offset + length]
        offset += length
    return streams


def stream_sizes(data: bytes, source: str = "PGRP blob") -> dict:
    if prune.is_lzma(data):
        return {"lzma": len(data)}
    return {name: len(s) for name, s in split_streams(data, source).items()}


def unpack(data: bytes, source: str = "PGRP blob") -> dict:
    """The quantized state {"tensors", "meta", "config"} that `pack` (or pack_lzma) turned into `data`."""
    if prune.is_lzma(data):
        return prune.lzma_unpack(data, source)
    streams = split_streams(data, source)
    try:
        header, tensors = _decode_remainder(brotli.decompress(streams["remainder"]), source)
        perm_bytes = brotli.decompress(streams["perms"]) if streams["perms"] else b""
    except brotli.error as e:
        raise PgolfError(f"{source}: brotli stream is corrupt ({e}); {REPACK}") from None
    with ThreadPoolExecutor(len(GROUPS)) as pool:
        blobs = list(pool.map(lambda g: lrzip_decompress(streams[g], f"{source} ({g})"), GROUPS))
    perms = np.frombuffer(perm_bytes, "<u2")
    perm_at = 0
    for g, (group, blob, shapes) in enumerate(zip(GROUPS, blobs, header["groups"])):
        expected = sum(rows * cols for _, rows, cols in shapes)
        if len(blob) != expected:
            raise PgolfError(f"{source}: group {group} holds {len(blob)} bytes, its shapes need {expected}; {REPACK}")
        at = 0
        for name, rows, cols in shapes:
            t = torch.from_numpy(np.frombuffer(blob, np.int8, rows * cols, at).reshape(cols, rows).T.copy())
            at += rows * cols
            if group in HOT:
                order = perms[perm_at : perm_at + rows].astype(np.int64)
                perm_at += rows
                if len(order) != rows:
                    raise PgolfError(f"{source}: permutation stream too short for {name}; {REPACK}")
                restored = torch.empty_like(t)
                restored[torch.from_numpy(order)] = t
                t = restored
            tensors[name] = t
    if perm_at != len(perms):
        raise PgolfError(f"{source}: permutation stream has {len(perms) - perm_at} entries left over; {REPACK}")
    return {"tensors": tensors, "meta": header["meta"], "config": _from_json(header["config"])}


# --- files ----------------------------------------------------------------------------------------------------


def pack_lzma(state: dict, prune_target_bytes: int | None) -> tuple[bytes, int]:
    """#1512's artifact: (lzma blob, int6 codes zeroed to fit prune_target_bytes; 0 without a target)."""
    if prune_target_bytes is None:
        return prune.lzma_pack(state), 0
    pruned, state = prune.prune_to_target(state, prune_target_bytes, lambda s: len(prune.lzma_pack(s)))
    return prune.lzma_pack(state), pruned


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(blob_path, pack_json_path) -> bytes:
    """The blob's bytes, after checking them against the sha256 that pack.json recorded."""
    info = read_json(pack_json_path)
    try:
        data = Path(blob_path).read_bytes()
    except FileNotFoundError:
        raise PgolfError(f"{blob_path}: file not found; run the pack rule first") from None
    digest, recorded = sha256(data), str(info.get("sha256"))
    if digest != recorded:
        raise PgolfError(
            f"{blob_path}: sha256 {digest[:16]}… differs from {pack_json_path} ({recorded[:16]}…); "
            f"the artifact changed after packing: {REPACK}"
        )
    return data


def load_quantized(path) -> dict:
    state = load_torch(path, "quantized state", "quantize")
    try:
        _check_state(state)
    except PgolfError as e:
        raise PgolfError(f"{path}: {e}") from None
    return state


def brotli_baseline_bytes(state: dict) -> int:
    """Size of the straightforward alternative: torch.save of the whole state, brotli quality 11, lgwin 24."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return len(_brotli(buf.getvalue()))


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def index(blob_path, out):
    """Adopt an existing blob: it must unpack cleanly; pack.json then records its streams and sha256."""
    path = Path(blob_path)
    if not path.exists():
        raise PgolfError(f"{path}: artifact not found; set eval.artifact to the path of a pgolf model.pgrp")
    data = path.read_bytes()
    unpack(data, str(path))
    out = Path(out)
    write_bytes(out, data)
    write_json(out.with_name("pack.json"), {"streams": stream_sizes(data, str(path)), "total_bytes": len(data),
                                            "sha256": sha256(data), "source": str(path)})


def main(argv=None):
    from .runlog import RunLog

    parser = argparse.ArgumentParser(prog="python -m pgolf.pack", description="Pack quantized.pt into model.pgrp.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--quantized", help="quantized.pt from the quantize stage")
    source.add_argument("--index", help="a model.pgrp made elsewhere (eval.artifact): check it, copy it, describe it")
    parser.add_argument("--out", required=True, help="model.pgrp to write; pack.json goes beside it")
    parser.add_argument("--config", help='JSON text or path {"preset": {...}}: its pack section (default: PGRP)')
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the brotli-only comparison (one core compresses the whole state: minutes)")
    args = parser.parse_args(argv)
    if args.index:
        return index(args.index, args.out)
    log = RunLog("pack", {"quantized": args.quantized, "out": args.out})
    state = load_quantized(args.quantized)
    spec = Preset.parse(load_stage_config(args.config).get("preset")).pack if args.config else PackSpec()
    start = time.perf_counter()
    if spec.format == "lzma":
        data, pruned = pack_lzma(state, spec.prune_target_bytes)
    else:
        data, pruned = pack(state), None
    seconds = time.perf_counter() - start
    info = {
        "format": spec.format,
        "pruned_int6_codes": pruned,
        "streams": stream_sizes(data),
        "total_bytes": len(data),
        "seconds": round(seconds, 3),
        "cores": cores(),
        "nn_device": "cuda" if torch.cuda.is_available() else "cpu",
        "sha256": sha256(data),
    }
    log.write({"event": "packed", **info})
    if not args.no_baseline:
        info["brotli_baseline_bytes"] = brotli_baseline_bytes(state)
        info["saved_vs_baseline_bytes"] = info["brotli_baseline_bytes"] - len(data)
    out = Path(args.out)
    write_bytes(out, data)
    write_json(out.with_name("pack.json"), info)
    log.write({"event": "done", **info})
    log.close()


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
