"""Token shards and the data manifest (docs/contracts.md).

Shard: 256 little-endian int32 header (magic 20240520, version 1, n_tokens, zeros) then n_tokens uint16.
Names: fineweb_{train,val}_{i:06d}.bin and the val byte sidecar fineweb_val_bytes_{i:06d}.bin, aligned 1:1.
manifest.json: {"dataset", "source", "tokenizer": {"path", "sha256"}, "vocab_size", "val_docs", "bos_id",
"caseops", "shards": {"train" | "val" | "val_bytes": [{"path", "tokens", "sha256"}]}}; shard and tokenizer
paths are relative to the manifest's folder.
"""

import hashlib
from pathlib import Path

import numpy as np

from .errors import PgolfError
from .io import atomic_path, read_json

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
BOS_ID = 1
SPLITS = ("train", "val", "val_bytes")


def shard_name(split: str, index: int) -> str:
    return f"fineweb_{split}_{index:06d}.bin"


def write_shard(path, tokens) -> dict:
    """Write one shard atomically; return its manifest entry (path as given, tokens, sha256)."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise PgolfError(f"{path}: token ids must fit in uint16 (0..65535); use a vocabulary below 65,536")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)
    payload = header.tobytes() + tokens.astype("<u2").tobytes()
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return {"path": str(path), "tokens": int(tokens.size), "sha256": hashlib.sha256(payload).hexdigest()}


def read_header(path) -> int:
    """Validate magic, version and file size; return the token count."""
    path = Path(path)
    if not path.exists():
        raise PgolfError(f"{path}: shard not found; re-run the data stage (tokenize or download)")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise PgolfError(f"{path}: {size} bytes is shorter than the 1,024-byte shard header; re-create the shard")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise PgolfError(f"{path}: wrong magic {header[0]} (expected {MAGIC}); this is not a token shard")
    if header[1] != VERSION:
        raise PgolfError(f"{path}: unsupported shard version {header[1]} (expected {VERSION}); re-create the shard")
    n_tokens = int(header[2])
    if size != HEADER_BYTES + 2 * n_tokens:
        raise PgolfError(
            f"{path}: size {size} bytes does not match the header's {n_tokens} tokens "
            f"(expected {HEADER_BYTES + 2 * n_tokens}); the file is truncated or corrupt, re-create it"
        )
    return n_tokens


def read_shard(path) -> np.ndarray:
    """The shard's tokens as a read-only uint16 memory map (validated first)."""
    n_tokens = read_header(path)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n_tokens,))


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(path) -> dict:
    manifest = read_json(path)
    missing = [k for k in ("dataset", "tokenizer", "vocab_size", "shards") if k not in manifest]
    if missing:
        raise PgolfError(f"{path}: manifest lacks {missing}; re-run the data stage that writes it")
    return manifest


def shard_paths(manifest_path, split: str) -> list[Path]:
    """Absolute paths of one split's shards, in order."""
    manifest = load_manifest(manifest_path)
    base = Path(manifest_path).resolve().parent
    return [base / entry["path"] for entry in manifest["shards"].get(split, [])]


def tokenizer_path(manifest_path) -> Path:
    return Path(manifest_path).resolve().parent / load_manifest(manifest_path)["tokenizer"]["path"]


def load_split(manifest_path, split: str) -> np.ndarray:
    """All tokens of a split concatenated (val and its sidecar fit in memory; train is read shard by shard)."""
    paths = shard_paths(manifest_path, split)
    if not paths:
        return np.zeros(0, dtype=np.uint16)
    return np.concatenate([np.asarray(read_shard(p)) for p in paths])
