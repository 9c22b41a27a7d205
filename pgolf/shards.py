"""Token shards and the data manifest (docs/contracts.md).

Shard: 256 little-endian int32 header (magic 20240520, version 1, n_tokens, zeros) then n_tokens uint16.
Names: fineweb_{train,val}_{i:06d}.bin and the val byte sidecar fineweb_val_bytes_{i:06d}.bin, aligned 1:1.
manifest.json: {"dataset", "source", "tokenizer": {"path", "sha256"}, "vocab_size", "val_docs", "bos_id",
"caseops", "shards": {"train" | "val" | "val_bytes": [{"path", "tokens", "sha256"}]}}; shard and tokenizer
paths are relative to the manifest's folder and stay inside it. `load_manifest` checks every entry's type;
`verify_checksums` compares the files with the manifest (the data audit runs it, before anything trains).
"""

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

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


def read_shard(path, vocab_size: int | None = None) -> np.ndarray:
    """The shard's tokens as a read-only uint16 memory map (validated first); with `vocab_size`, a token id
    outside the vocabulary is refused (one pass over the shard)."""
    n_tokens = read_header(path)
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n_tokens,))
    if vocab_size is not None and n_tokens and int(tokens.max()) >= vocab_size:
        at = int(np.argmax(tokens >= vocab_size))
        raise PgolfError(
            f"{path}: token id {int(tokens[at])} at position {at} is outside the vocabulary of {vocab_size}; "
            "the shard was not made with this dataset's tokenizer: re-run the data stage (tokenize or download)"
        )
    return tokens


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(path) -> dict:
    """The manifest, after checking the type of every field pgolf reads and that its paths stay in its folder."""
    manifest = read_json(path)

    def bad(problem):
        return PgolfError(f"{path}: {problem}; re-run the data stage that writes the manifest (tokenize or download)")

    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    missing = [k for k in ("dataset", "tokenizer", "vocab_size", "shards") if k not in manifest]
    if missing:
        raise bad(f"manifest lacks {missing}")
    vocab = manifest["vocab_size"]
    if not _is_int(vocab) or not 0 < vocab <= 1 << 16:
        raise bad(f"vocab_size {vocab!r} is not a whole number in 1..65536")
    _check_entry(manifest["tokenizer"], "tokenizer", ("path", "sha256"), bad)
    shards = manifest["shards"]
    if not isinstance(shards, dict) or not set(shards) <= set(SPLITS):
        raise bad(f"shards must map splits {list(SPLITS)} to lists of entries")
    for split, entries in shards.items():
        if not isinstance(entries, list):
            raise bad(f"shards.{split} is not a list")
        for i, entry in enumerate(entries):
            _check_entry(entry, f"shards.{split}[{i}]", ("path", "tokens", "sha256"), bad)
    return manifest


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(entry, where, keys, bad):
    if not isinstance(entry, dict) or not set(keys) <= set(entry):
        raise bad(f"{where} is not an object with {list(keys)}")
    path = entry["path"]
    if not isinstance(path, str) or not path:
        raise bad(f"{where}.path {path!r} is not a file name")
    parts = PurePosixPath(path).parts
    if PurePosixPath(path).is_absolute() or ".." in parts or "\\" in path:
        raise bad(f"{where}.path {path!r} leaves the manifest's folder; paths are relative to it, without '..'")
    if not isinstance(entry["sha256"], str):
        raise bad(f"{where}.sha256 {entry['sha256']!r} is not a string")
    if "tokens" in keys and (not _is_int(entry["tokens"]) or entry["tokens"] < 0):
        raise bad(f"{where}.tokens {entry['tokens']!r} is not a token count")


def shard_paths(manifest_path, split: str) -> list[Path]:
    """Absolute paths of one split's shards, in order."""
    manifest = load_manifest(manifest_path)
    base = Path(manifest_path).resolve().parent
    return [base / entry["path"] for entry in manifest["shards"].get(split, [])]


def tokenizer_path(manifest_path) -> Path:
    return Path(manifest_path).resolve().parent / load_manifest(manifest_path)["tokenizer"]["path"]


def verify_checksums(manifest_path, workers: int = 8) -> int:
    """Check every shard's and the tokenizer's sha256 (and each shard's token count) against the manifest;
    return the bytes hashed. A file changed since the manifest was written is one error naming it."""
    manifest = load_manifest(manifest_path)
    base = Path(manifest_path).resolve().parent
    entries = [e for split in SPLITS for e in manifest["shards"].get(split, [])] + [manifest["tokenizer"]]
    for entry in entries[:-1]:
        tokens = read_header(base / entry["path"])
        if tokens != entry["tokens"]:
            raise PgolfError(
                f"{base / entry['path']}: {tokens} tokens, the manifest {manifest_path} says {entry['tokens']}; "
                "the file changed after the data stage wrote it: re-run that stage (delete the manifest)"
            )
    paths = [base / e["path"] for e in entries]
    for path in paths:
        if not path.exists():
            raise PgolfError(
                f"{path}: listed in {manifest_path} but missing; re-run the data stage (delete the manifest)"
            )
    with ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL
        digests = list(pool.map(file_sha256, paths))
    for path, entry, digest in zip(paths, entries, digests):
        if digest != entry["sha256"]:
            raise PgolfError(
                f"{path}: sha256 {digest[:16]}… differs from the manifest {manifest_path} ({entry['sha256'][:16]}…); "
                "the file changed after the data stage wrote it: re-run that stage (delete the manifest)"
            )
    return sum(p.stat().st_size for p in paths)


def load_split(manifest_path, split: str) -> np.ndarray:
    """All tokens of a split concatenated (val and its sidecar fit in memory; train is read shard by shard);
    token ids outside the manifest's vocabulary are refused (byte counts of val_bytes are not ids)."""
    paths = shard_paths(manifest_path, split)
    if not paths:
        return np.zeros(0, dtype=np.uint16)
    vocab = None if split == "val_bytes" else load_manifest(manifest_path)["vocab_size"]
    return np.concatenate([np.asarray(read_shard(p, vocab)) for p in paths])
