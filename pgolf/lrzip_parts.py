"""`pack.compressor: lrzip_parts`: the PGRP container with each large group cut into several lrzip streams.

    future = submit_parts(pool, blob, PART_BYTES, lrzip_compress)     # future.result(): the group's stream
    blob = decode_parts(stream, source, expected, lrzip_decompress)

#1855 compresses each group as one lrzip stream, and a ZPAQ stream decodes on one core, so the largest groups (mlp.fc
and mlp.proj, 11 x 2048 x 512 bytes each at the record's shapes) bound unpack however many cores there are. Here a
group's bytes longer than PART_BYTES are cut into near-equal parts, each its own lrzip stream, so that all of them
compress and decode at once; each part starts its ZPAQ model afresh, which costs some bytes (bench/RESULTS.md).
A cut group's stream is b"LRZS", a uint32 LE part count, one uint32 LE length per part, then the parts; a group no
longer than PART_BYTES stays one plain lrzip stream. pgolf.pack reads both; this module ships in train_gpt.py only
where the config picks lrzip_parts (pgolf.codepack.OPTIONAL).
"""

import math
import struct
from concurrent.futures import ThreadPoolExecutor

from .errors import PgolfError
from .pack import PARTS_MAGIC, REPACK

# At the record's shapes: mlp.fc and mlp.proj in 4 parts, tok_emb in 2, the attention groups whole (14 streams)
PART_BYTES = 3 << 20
MAX_PARTS = 256


class _Joined:
    """The future-like stream of a cut group: its parts' futures, joined behind the part table on result()."""

    def __init__(self, futures):
        self.futures = futures

    def result(self) -> bytes:
        parts = [f.result() for f in self.futures]
        return PARTS_MAGIC + struct.pack(f"<{len(parts) + 1}I", len(parts), *map(len, parts)) + b"".join(parts)


def submit_parts(pool, blob: bytes, part_bytes: int, compress):
    """The group's stream as a future: one `compress` job per part on `pool`, or one plain stream when it is short."""
    if len(blob) <= part_bytes:
        return pool.submit(compress, blob)
    count = min(math.ceil(len(blob) / part_bytes), MAX_PARTS)
    cuts = [len(blob) * i // count for i in range(count + 1)]
    return _Joined([pool.submit(compress, blob[a:b]) for a, b in zip(cuts, cuts[1:])])


def decode_parts(data: bytes, source: str, expected: int, decode) -> bytes:
    """A cut group's bytes: every part decoded at once by `decode(part, source, its size)`, each part's size read
    from its lrzip header; the sizes must add up to `expected`, the size the container's header declares."""
    if len(data) < 8:
        raise PgolfError(f"{source}: truncated lrzip part table; {REPACK}")
    (count,) = struct.unpack_from("<I", data, 4)
    table = 8 + 4 * count
    if not 2 <= count <= MAX_PARTS or len(data) < table:
        raise PgolfError(f"{source}: {count} lrzip parts in {len(data)} bytes; {REPACK}")
    lengths = struct.unpack_from(f"<{count}I", data, 8)
    if sum(lengths) != len(data) - table:
        raise PgolfError(f"{source}: lrzip parts add up to {sum(lengths)} bytes, {len(data) - table} follow; {REPACK}")
    parts, at = [], table
    for length in lengths:
        part = data[at : at + length]
        at += length
        if len(part) < 14 or part[:4] != b"LRZI":  # lrzip's magic, version, then the uint64 LE decoded size
            raise PgolfError(f"{source}: lrzip part {len(parts)} is not an lrzip stream; {REPACK}")
        parts.append((part, struct.unpack_from("<Q", part, 6)[0]))
    if sum(size for _, size in parts) != expected:
        raise PgolfError(
            f"{source}: lrzip parts decode to {sum(size for _, size in parts)} bytes, the shapes need {expected}; "
            f"{REPACK}"
        )
    with ThreadPoolExecutor(count) as pool:
        return b"".join(pool.map(lambda i: decode(parts[i][0], f"{source} part {i}", parts[i][1]), range(count)))
