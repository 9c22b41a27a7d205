"""Per-group lrzip packing of a quantized state into a PGRP container (docs/record-stack.md §7).

    python -m pgolf.pack --quantized results/<name>/seed<seed>/quant/<preset>/quantized.pt \
        --out results/<name>/seed<seed>/quant/<preset>/model.pgrp

writes model.pgrp and, beside it, pack.json (bytes per stream, seconds, cores, sha256, brotli-only baseline).

Container: b"PGRP", uint32 LE stream count (9), one uint32 LE length per stream, then the streams in the order
of STREAMS: 7 lrzip groups, the brotli remainder, the brotli row permutations (an empty stream is a missing
group). A group concatenates the int8 matrices of one role over layers 0..n: rows of the hot groups reordered
by a greedy L1 nearest-neighbour chain, each matrix transposed (column-major bytes). The remainder holds every
other tensor plus meta, config and the group shapes: a uint32 LE length, a JSON header, then raw tensor bytes
(no pickle), so a .pgrp is self-describing. The decoded remainder is sealed: a uint64 LE length of that payload,
the payload, then a sha256 over the length, the payload and every other stream (each preceded by its uint64 LE
length). `unpack` checks the seal before it reads anything else, then validates the header (types, bounds, row
orders that are permutations) and decodes every stream only up to the size the header declares for it.

`--compressor lrzip_parts` writes the same container with each group longer than a few MB cut into several lrzip
streams that decode at once (pgolf.lrzip_parts; an option, not #1855's format). `--compressor brotli_shuffle` writes
#1572's format instead (pgolf.pack_shuffle); `--compressor lzma_pruned`
writes #1512's: lzma of the torch-saved state, its least costly int6 codes zeroed until the blob fits
`--prune-target` bytes (pgolf.prune, b"PLZM" + the decoded size first). `unpack_artifact` and
`artifact_streams` read any of the three (by the blob's magic).
"""

import argparse
import hashlib
import json
import math
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

from .errors import PgolfError
from .io import load_torch, read_json, write_bytes, write_json

MAGIC = b"PGRP"
GROUPS = ("tok_emb", "attn.c_k", "attn.c_q", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")
STREAMS = GROUPS + ("remainder", "perms")
HOT = frozenset({"tok_emb", "attn.c_q", "mlp.fc"})
BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(attn\.c_q|attn\.c_k|attn\.c_v|attn\.proj|mlp\.fc|mlp\.proj)\.weight\.q")
REPACK = "re-run the pack rule (delete the .pgrp to force it)"
DIGEST_BYTES = 32
MAX_DECODED_BYTES = 1 << 31  # sanity cap on any declared stream size (a record group decodes to ~12 MB)
MAX_HEADER_BYTES = 1 << 26
# lrzip gets this long plus a second per LRZIP_BYTES_PER_SECOND of declared output (ZPAQ decodes MB/s)
LRZIP_SECONDS = 60.0
LRZIP_BYTES_PER_SECOND = 250_000
DTYPES = {
    name: getattr(torch, name)
    for name in ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64")
}


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


def _lrzip(args, data: bytes, source: str, max_output=None, timeout=None) -> bytes:
    """Run lrzip on `data` written to a temp file; return the bytes of its output file. With `max_output` and
    `timeout`, lrzip is killed once its output grows past max_output bytes or it runs longer than timeout seconds."""
    with tempfile.TemporaryDirectory(prefix="pgolf-lrzip-") as tmp:
        src, dst = Path(tmp, "in"), Path(tmp, "out")
        src.write_bytes(data)
        cmd = [lrzip_binary(), *args, "-q", "-f", "-o", str(dst), str(src)]
        with open(Path(tmp, "messages"), "w+b") as messages:
            proc = subprocess.Popen(cmd, stdout=messages, stderr=subprocess.STDOUT)
            problem = _watch(proc, dst, max_output, timeout)
            messages.seek(0)
            tail = messages.read().decode(errors="replace").strip()[-500:]
        if problem:
            raise PgolfError(f"{source}: lrzip {' '.join(args)} {problem}; {REPACK}")
        if proc.returncode != 0 or not dst.exists():
            raise PgolfError(f"{source}: lrzip {' '.join(args)} failed ({tail}); {REPACK}")
        return dst.read_bytes()


def _watch(proc, dst: Path, max_output, timeout) -> str | None:
    """Wait for lrzip, killing it (and saying why) when its output or its time runs past the bound."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            proc.wait(timeout=0.05)
            return None
        except subprocess.TimeoutExpired:
            pass
        problem = None
        if max_output is not None and dst.exists() and dst.stat().st_size > max_output:
            problem = f"wrote more than the {max_output} bytes the header declares"
        elif deadline is not None and time.monotonic() > deadline:
            problem = f"ran past its {timeout:.0f} s limit"
        if problem:
            proc.kill()
            proc.wait()
            return problem


def lrzip_compress(data: bytes) -> bytes:
    return _lrzip(["-z", "-L", "9"], data, "lrzip input") if data else b""


def lrzip_decompress(data: bytes, source: str, expected: int | None = None) -> bytes:
    """Decode one lrzip stream; with `expected` (the size the header declares), refuse any other size before and
    after decoding, and bound lrzip's output and time by it."""
    if expected is None:
        return _lrzip(["-d"], data, source) if data else b""
    if data[:4] == PARTS_MAGIC:
        from .lrzip_parts import decode_parts  # shipped only where pack.compressor picks lrzip_parts

        return decode_parts(data, source, expected, lrzip_decompress)
    if not data or not expected:
        if data or expected:
            raise PgolfError(f"{source}: {len(data)} bytes of lrzip stream for {expected} bytes of matrices; {REPACK}")
        return b""
    # lrzip's magic header: b"LRZI", major, minor, then the uint64 LE size of the decoded file
    if len(data) < 14 or data[:4] != b"LRZI":
        raise PgolfError(f"{source}: not an lrzip stream (magic {data[:4]!r}); {REPACK}")
    (declared,) = struct.unpack_from("<Q", data, 6)
    if declared != expected:
        raise PgolfError(f"{source}: lrzip stream decodes to {declared} bytes, the shapes need {expected}; {REPACK}")
    out = _lrzip(["-d"], data, source, expected, LRZIP_SECONDS + expected / LRZIP_BYTES_PER_SECOND)
    if len(out) != expected:
        raise PgolfError(f"{source}: lrzip wrote {len(out)} bytes, the shapes need {expected}; {REPACK}")
    return out


# --- brotli, decoded no further than a declared size ----------------------------------------------------------


def brotli_decompress(data: bytes, limit: int, source: str, what: str, whole=True) -> bytes:
    """Decode a brotli stream into at most `limit` bytes: the whole stream (an error if it decodes to more or
    ends early), or with whole=False just its first `limit` bytes."""
    dec, out = brotli.Decompressor(), bytearray()
    try:  # output_buffer_limit: brotli >= 1.2 (pyproject.toml; the submission's requirements.txt says so too)
        out += dec.process(data, output_buffer_limit=limit + 1)
        while len(out) <= limit and not dec.is_finished() and not dec.can_accept_more_data():
            out += dec.process(b"", output_buffer_limit=limit + 1 - len(out))
    except brotli.error as e:
        raise PgolfError(f"{source}: {what} stream is corrupt (brotli: {e}); {REPACK}") from None
    if not whole:
        return bytes(out[:limit])
    problem = None
    if len(out) > limit:
        problem = f"it decodes past its declared {limit} bytes"
    elif not dec.is_finished():
        problem = f"it ends without an end marker after {len(out)} of {limit} declared bytes"
    elif len(out) != limit:
        problem = f"it decodes to {len(out)} bytes, {limit} declared"
    if problem:
        raise PgolfError(f"{source}: {what} stream is corrupt ({problem}); {REPACK}")
    return bytes(out)


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
        if set(value) == {"__tuple__"} and isinstance(value["__tuple__"], list):
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


def _corrupt(source: str, problem: str) -> PgolfError:
    return PgolfError(f"{source}: remainder stream is corrupt ({problem}); {REPACK}")


def _remainder_header(data: bytes, source: str) -> tuple[dict, int]:
    """The remainder's JSON header and the offset of the tensor bytes after it."""
    if len(data) < 4:
        raise _corrupt(source, "shorter than its length field")
    (size,) = struct.unpack_from("<I", data)
    if 4 + size > len(data):
        raise _corrupt(source, f"a {size}-byte header in {len(data) - 4} bytes")
    try:
        return json.loads(data[4 : 4 + size]), 4 + size
    except (ValueError, RecursionError) as e:
        raise _corrupt(source, f"header is not JSON: {e}") from None


def _decode_remainder(data: bytes, source: str):
    """The remainder's JSON header and tensors."""
    header, offset = _remainder_header(data, source)
    tensors = {}
    for name, dtype_name, shape in header["tensors"]:
        dtype = DTYPES[dtype_name]
        numel = math.prod(shape)
        nbytes = numel * dtype.itemsize
        if offset + nbytes > len(data):
            raise _corrupt(source, f"tensor {name} runs past the end")
        raw = bytearray(data[offset : offset + nbytes])
        flat = torch.frombuffer(raw, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(shape)
        offset += nbytes
    if offset != len(data):
        raise _corrupt(source, f"{len(data) - offset} bytes left over")
    return header, tensors


def check_blob(data: bytes, source: str = "PGRP blob"):
    """Every field of a blob's remainder header, its type and bound, before a blob made elsewhere is unpacked
    (pgolf.artifact_index). unpack itself reads the header as its seal holds it: the DAG unpacks only its own
    blobs, once their sha256 matches pack.json's, and train_gpt.py the one it has just packed."""
    header, _ = _remainder_header(_open_remainder(split_streams(data, source), source), source)
    _check_header(header, lambda problem: _corrupt(source, problem))


def _check_header(header, bad):
    """Types and bounds of the remainder header: config, meta, the group shapes and the tensor table."""
    if not isinstance(header, dict) or not {"config", "meta", "groups", "tensors"} <= set(header):
        raise bad('header lacks "config", "meta", "groups" or "tensors"')
    if not isinstance(header["config"], dict):
        raise bad("config is not a mapping")
    meta = header["meta"]
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("meta is not a mapping of names to strings")
    groups = header["groups"]
    if not isinstance(groups, list) or len(groups) != len(GROUPS):
        raise bad(f"groups is not a list of {len(GROUPS)} shape lists")
    names = set()
    for g, group in enumerate(groups):
        if not isinstance(group, list):
            raise bad(f"group {GROUPS[g]} is not a list")
        for row in group:
            if not (
                isinstance(row, list)
                and len(row) == 3
                and isinstance(row[0], str)
                and all(_is_int(n) and 0 < n <= MAX_DECODED_BYTES for n in row[1:])
            ):
                raise bad(f"group {GROUPS[g]} has the entry {str(row)[:80]}, not [name, rows, cols]")
            name, rows, cols = row
            if _group_slot(name) is None or _group_slot(name)[0] != g or name in names:
                raise bad(f"group {GROUPS[g]} lists {name!r}, which is not its own or appears twice")
            if GROUPS[g] in HOT and rows > 1 << 16:
                raise bad(f"{name} has {rows} rows; row orders hold at most 65,536")
            names.add(name)
    entries = header["tensors"]
    if not isinstance(entries, list):
        raise bad("tensors is not a list")
    total = 0
    for entry in entries:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], str)
            and entry[1] in DTYPES
            and isinstance(entry[2], list)
            and all(_is_int(n) and 0 <= n <= MAX_DECODED_BYTES for n in entry[2])
        ):
            raise bad(f"tensor entry {str(entry)[:80]} is not [name, dtype, shape]")
        if entry[0] in names:
            raise bad(f"tensor {entry[0]!r} appears twice")
        names.add(entry[0])
        total += math.prod(entry[2]) * DTYPES[entry[1]].itemsize  # Python ints: no overflow
    if total > MAX_DECODED_BYTES or any(sum(r * c for _, r, c in group) > MAX_DECODED_BYTES for group in groups):
        raise bad("the declared tensor sizes exceed the size limit")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _digest(head: bytes, streams: dict) -> bytes:
    """sha256 over the sealed remainder's length and payload, then every other stream with its length."""
    h = hashlib.sha256(head)
    for name in STREAMS:
        if name != "remainder":
            h.update(struct.pack("<Q", len(streams[name])))
            h.update(streams[name])
    return h.digest()


def _seal(payload: bytes, streams: dict) -> bytes:
    head = struct.pack("<Q", len(payload)) + payload
    return head + _digest(head, streams)


def _open_remainder(streams: dict, source: str) -> bytes:
    """The remainder's payload, decoded no further than its declared size, once the seal over every stream holds."""
    data = streams["remainder"]
    if not data:
        raise PgolfError(f"{source}: the remainder stream is empty; {REPACK}")
    prefix = brotli_decompress(data, 8, source, "remainder", whole=False)
    if len(prefix) < 8:
        raise PgolfError(f"{source}: remainder stream is corrupt (it decodes to {len(prefix)} bytes); {REPACK}")
    (size,) = struct.unpack("<Q", prefix)
    if size > MAX_DECODED_BYTES:
        raise PgolfError(f"{source}: remainder declares {size} bytes, over the {MAX_DECODED_BYTES} limit; {REPACK}")
    sealed = brotli_decompress(data, 8 + size + DIGEST_BYTES, source, "remainder")
    head, digest = sealed[:-DIGEST_BYTES], sealed[-DIGEST_BYTES:]
    if _digest(head, streams) != digest:
        raise PgolfError(
            f"{source}: integrity check failed (the sha256 sealed in the remainder does not match the streams): "
            f"the file is damaged or was changed after packing; {REPACK}"
        )
    return head[8:]


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


def brotli_compress(data: bytes) -> bytes:
    return brotli.compress(data, quality=11, lgwin=24)


def _submit_group(pool, members: list, group: str, part_bytes: int | None):
    blob, perm = _group_blob(members, group in HOT)
    if part_bytes:
        from .lrzip_parts import submit_parts

        return submit_parts(pool, blob, part_bytes, lrzip_compress), perm
    return pool.submit(lrzip_compress, blob), perm


def pack(quantized_state: dict, memo=None, part_bytes: int | None = None) -> bytes:
    """The PGRP blob of a quantized state {"tensors", "meta", "config"}.

    memo((group, members), compute) returns compute(), a group's (lrzip stream future, row orders), or an earlier
    result for a group of equal members (pgolf.capfit keeps one across many states); the blob is the same either way.
    part_bytes (lrzip_parts): cut each group longer than this into several lrzip streams.
    """
    memo = memo or (lambda key, compute: compute())
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
    with ThreadPoolExecutor(4 * len(GROUPS) + 1) as pool:  # the threads wait on lrzip processes
        payload = pool.submit(_encode_remainder, remainder, meta, config, shapes)
        futures = [None] * len(GROUPS)
        # Cold groups first: their lrzip processes run while the chains of the hot groups are computed.
        for g in sorted(range(len(GROUPS)), key=lambda g: GROUPS[g] in HOT):
            futures[g], perms[g] = memo(
                (GROUPS[g], members[g]), lambda g=g: _submit_group(pool, members[g], GROUPS[g], part_bytes)
            )
        perm_bytes = b"".join(perms)
        streams = dict(zip(GROUPS, (f.result() for f in futures)))
        streams["perms"] = brotli_compress(perm_bytes) if perm_bytes else b""
        streams["remainder"] = brotli_compress(_seal(payload.result(), streams))  # the seal covers the other streams
    ordered = [streams[name] for name in STREAMS]
    return MAGIC + struct.pack(f"<{len(ordered) + 1}I", len(ordered), *map(len, ordered)) + b"".join(ordered)


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
    return {name: len(s) for name, s in split_streams(data, source).items()}


def unpack(data: bytes, source: str = "PGRP blob") -> dict:
    """The quantized state {"tensors", "meta", "config"} that `pack` turned into `data`.

    Checks the seal over every stream first; decodes each stream no further than the size the header declares; a
    damaged blob is one PgolfError naming `source`. A blob made elsewhere goes through check_blob first."""
    streams = split_streams(data, source)
    header, tensors = _decode_remainder(_open_remainder(streams, source), source)
    hot_rows = sum(rows for g, shapes in enumerate(header["groups"]) if GROUPS[g] in HOT for _, rows, _ in shapes)
    perm_bytes = b""
    if hot_rows or streams["perms"]:
        perm_bytes = brotli_decompress(streams["perms"], 2 * hot_rows, source, "permutation")
    with ThreadPoolExecutor(len(GROUPS)) as pool:
        blobs = list(
            pool.map(
                lambda g: lrzip_decompress(
                    streams[GROUPS[g]],
                    f"{source} ({GROUPS[g]})",
                    sum(rows * cols for _, rows, cols in header["groups"][g]),
                ),
                range(len(GROUPS)),
            )
        )
    perms = np.frombuffer(perm_bytes, "<u2")
    perm_at = 0
    for group, blob, shapes in zip(GROUPS, blobs, header["groups"]):
        at = 0
        for name, rows, cols in shapes:
            t = torch.from_numpy(np.frombuffer(blob, np.int8, rows * cols, at).reshape(cols, rows).T.copy())
            at += rows * cols
            if group in HOT:
                order = perms[perm_at : perm_at + rows].astype(np.int64)
                perm_at += rows
                if not np.array_equal(np.sort(order), np.arange(rows)):
                    raise PgolfError(
                        f"{source}: the row order of {name} is not a permutation of its {rows} rows; {REPACK}"
                    )
                restored = torch.empty_like(t)
                restored[torch.from_numpy(order)] = t
                t = restored
            tensors[name] = t
    return {"tensors": tensors, "meta": header["meta"], "config": _from_json(header["config"])}


# --- either format ---------------------------------------------------------------------------------------

COMPRESSORS = ("lrzip_groups", "lrzip_parts", "brotli_shuffle", "lzma_pruned")
LZMA_MAGIC = b"PLZM"  # pgolf.prune's blobs; the module itself ships only where lzma_pruned is chosen
PARTS_MAGIC = b"LRZS"  # a group cut into lrzip streams (pgolf.lrzip_parts, shipped only where lrzip_parts is chosen)


def pack_as(quantized_state: dict, compressor: str, prune_target_bytes: int | None = None) -> bytes:
    return pack_counted(quantized_state, compressor, prune_target_bytes)[0]


def pack_counted(quantized_state: dict, compressor: str, prune_target_bytes: int | None) -> tuple[bytes, int | None]:
    """(blob, int6 codes zeroed: lzma_pruned only, else None)."""
    if compressor not in COMPRESSORS:
        raise PgolfError(f"pack compressor {compressor!r} is not one of {COMPRESSORS}; fix pack.compressor")
    if prune_target_bytes is not None and compressor != "lzma_pruned":
        raise PgolfError(f"pack.prune_target_bytes applies to lzma_pruned only, not {compressor}; set it to null")
    if compressor == "lzma_pruned":
        from .prune import pack_pruned  # shipped only where pack.compressor picks it (codepack.OPTIONAL)

        return pack_pruned(quantized_state, prune_target_bytes)
    if compressor == "lrzip_groups":
        return pack(quantized_state), None
    if compressor == "lrzip_parts":
        from .lrzip_parts import PART_BYTES

        return pack(quantized_state, part_bytes=PART_BYTES), None
    from .pack_shuffle import pack_brotli_shuffle  # shipped only where pack.compressor picks it (codepack.OPTIONAL)

    return pack_brotli_shuffle(quantized_state), None


def unpack_artifact(data: bytes, source: str = "artifact") -> dict:
    """The quantized state of a blob in any of the formats."""
    if data[:4] == MAGIC:
        return unpack(data, source)
    if data[:4] == LZMA_MAGIC:
        from . import prune

        return prune.lzma_unpack(data, source)
    from .pack_shuffle import unpack_brotli_shuffle

    return unpack_brotli_shuffle(data, source)


def artifact_streams(data: bytes, source: str = "artifact") -> dict:
    if data[:4] == MAGIC:
        return stream_sizes(data, source)
    return {"lzma_pruned" if data[:4] == LZMA_MAGIC else "brotli_shuffle": len(data)}


# --- files ----------------------------------------------------------------------------------------------------


def prune_target(text: str) -> int | None:
    """--prune-target: a positive byte count, or none/None/null (the rule renders pack.prune_target_bytes)."""
    if text.lower() in ("none", "null"):
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a positive byte count nor none")
    return int(text)


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


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.pack", description="Pack quantized.pt into model.pgrp.")
    parser.add_argument("--quantized", required=True, help="quantized.pt from the quantize stage")
    parser.add_argument("--out", required=True, help="model.pgrp to write; pack.json goes beside it")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the brotli-only comparison (one core compresses the whole state: minutes)",
    )
    parser.add_argument(
        "--compressor",
        default="lrzip_groups",
        choices=COMPRESSORS,
        help="lrzip_groups: the PGRP container (#1855); lrzip_parts: the same, large groups cut into several lrzip "
        "streams; brotli_shuffle: #1572's single stream; "
        "lzma_pruned: #1512's lzma blob",
    )
    parser.add_argument(
        "--prune-target",
        type=prune_target,
        default=None,
        help="lzma_pruned: zero int6 codes until the blob is at most this many bytes; none = no pruning",
    )
    args = parser.parse_args(argv)
    run(args.quantized, args.out, args.compressor, args.prune_target, baseline=not args.no_baseline)


def run(quantized, out, compressor: str, prune_target_bytes: int | None, baseline: bool):
    """Pack quantized.pt into model.pgrp at `out` and write pack.json beside it; `baseline` adds the brotli-only size
    (one core compresses the whole state: minutes).

        pack.run("results/<name>/seed1/quant/record/quantized.pt", "results/<name>/seed1/quant/record/model.pgrp",
                 "lrzip_groups", None, baseline=True)
    """
    from .runlog import RunLog

    log = RunLog("pack", {"quantized": quantized, "out": out})
    state = load_quantized(quantized)
    start = time.perf_counter()
    data, pruned = pack_counted(state, compressor, prune_target_bytes)
    seconds = time.perf_counter() - start
    info = {
        "compressor": compressor,
        "pruned_int6_codes": pruned,
        "streams": artifact_streams(data),
        "total_bytes": len(data),
        "seconds": round(seconds, 3),
        "cores": cores(),
        "nn_device": "cuda" if torch.cuda.is_available() else "cpu",
        "sha256": sha256(data),
    }
    log.write({"event": "packed", **info})
    if baseline:  # never in train_gpt.py, whose run_all passes False (codepack.OUTSIDE_SCRIPT)
        from .pack_baseline import brotli_baseline_bytes

        info["brotli_baseline_bytes"] = brotli_baseline_bytes(state)
        info["saved_vs_baseline_bytes"] = info["brotli_baseline_bytes"] - len(data)
    out = Path(out)
    write_bytes(out, data)
    write_json(out.with_name("pack.json"), info)
    log.write({"event": "done", **info})
    log.close()


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
