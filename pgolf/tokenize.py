"""Tokenize documents into CaseOps shards with the val byte sidecar, and write the data manifest.

    python -m pgolf.tokenize --config CFG --tokenizer resources/data/<ds>/tokenizer.model \\
        --out resources/data/<ds>/manifest.json [--docs PATH] [--workers N]

Each document becomes BOS (id 1) + the ids of its CaseOps transform (no EOS). The first `data.val_docs`
documents form the val split, the rest train; shards hold `data.shard_tokens` tokens (the last one fewer;
documents span shard boundaries). Val shards get a sidecar aligned 1:1: for each token the number of
ORIGINAL UTF-8 bytes its SentencePiece surface covers (docs/record-stack.md §1.3; BOS and operators 0).
Worker processes tokenize chunks of documents in order, so the output is byte-identical for any --workers;
the manifest is written last, after every shard is complete.
"""

import argparse
import collections
import dataclasses
import os
import re
import sys
import weakref
from pathlib import Path

import numpy as np

from . import caseops
from .cli import doc_summary, run_cli
from .errors import PgolfError
from .io import write_json
from .runlog import RunLog
from .shards import BOS_ID, file_sha256, shard_name, write_shard
from .sources import data_config, iter_documents
from .stageconfig import load_stage_config
from .tokenizer import load, validate

SPACE = "\u2581".encode()  # SentencePiece's whitespace symbol
# Whitespace the fast path collapses. bytes.split()/strip() also take \x0b and \x0c, which SentencePiece
# treats differently (it deletes \x0b, so those bytes join a piece): documents holding them take the general path.
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r")] = True
_OTHER_SPLIT_BYTES = (b"\x0b", b"\x0c")
_OPERATOR_BYTES = re.compile(rb"\xee\x80[\x81-\x84]")
_ESC = caseops.ESC.encode()
_NOT_NORMALIZED = b"\xff"  # never valid UTF-8, so a piece with this never matches normalized text
MAX_SIDECAR = (1 << 16) - 1
CHUNK_CHARS = 1 << 20  # documents per worker task: about a MiB of text


@dataclasses.dataclass
class PieceTable:
    """Per-id facts used to derive the sidecar from ids alone."""

    normalized: list  # bytes of each piece in the normalized text (byte pieces: their byte)
    base_bytes: np.ndarray  # original bytes of the piece without its spaces; 0 for operators and specials
    spaces: np.ndarray  # how many "▁" the piece holds (each stands for one whitespace run)
    byte_value: np.ndarray  # the byte of a byte-fallback piece, -1 otherwise
    operators: np.ndarray  # bool: one of the four CaseOps operators
    esc_id: int

    @classmethod
    def build(cls, sp) -> "PieceTable":
        vocab = sp.get_piece_size()
        normalized, base, spaces = [], np.zeros(vocab, np.int64), np.zeros(vocab, np.int64)
        byte_value = np.full(vocab, -1, np.int64)
        operators = np.zeros(vocab, bool)
        for i in range(vocab):
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):
                byte_value[i] = int(piece[3:5], 16)  # "<0xAB>"
                normalized.append(bytes([byte_value[i]]))
                base[i] = 1
            elif sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                normalized.append(_NOT_NORMALIZED)
            else:
                data = piece.encode()
                normalized.append(data)
                operators[i] = piece in caseops.OPERATORS
                spaces[i] = data.count(SPACE)
                base[i] = 0 if operators[i] else len(data) - len(SPACE) * spaces[i]
        return cls(normalized, base, spaces, byte_value, operators, sp.piece_to_id(caseops.ESC))


_TABLES = weakref.WeakKeyDictionary()


def piece_table(sp) -> PieceTable:
    table = _TABLES.get(sp)
    if table is None:
        table = _TABLES[sp] = PieceTable.build(sp)
    return table


def _fast_sidecar(table: PieceTable, data: bytes, id_list: list, ids: np.ndarray) -> np.ndarray | None:
    """The sidecar from a lookup table, when SentencePiece's normalization only collapsed whitespace.

    That is checked exactly: the pieces must spell the document with every whitespace run (after
    stripping) replaced by one "▁". Then each piece covers its own bytes, a "▁" covers its whole run,
    and the stripped ends belong to no piece. Anything else (NFKC changes, removed control characters,
    a literal "▁") returns None and takes the general path.
    """
    core = data.strip()
    if SPACE in core or any(b in data for b in _OTHER_SPLIT_BYTES):
        return None
    words = core.split()
    if b"".join(map(table.normalized.__getitem__, id_list)) != SPACE.join(words):
        return None
    counts = table.base_bytes[ids]
    if len(words) > 1:
        ws = _WHITESPACE[np.frombuffer(core, np.uint8)]
        edges = np.flatnonzero(ws[1:] != ws[:-1])  # core starts and ends outside a run
        run_bytes = edges[1::2] - edges[::2]
        spaces = table.spaces[ids]
        if spaces.max() == 1:
            counts[spaces == 1] += run_bytes
        else:
            owner = np.repeat(np.arange(ids.size), spaces)
            counts += np.bincount(owner, weights=run_bytes, minlength=ids.size).astype(np.int64)
    byte_values = table.byte_value[ids]
    multibyte = np.flatnonzero(byte_values >= 0x80)
    if multibyte.size:  # a character spelled by byte pieces counts in full on its last piece
        lead = byte_values[multibyte] >= 0xC0
        last = np.append(lead[1:], True)
        counts[multibyte] = 0
        counts[multibyte[last]] = np.bincount(np.cumsum(lead) - 1)
    if _ESC in core:  # an escaped literal operator counts its 3 bytes
        pending = False
        for i in np.flatnonzero(table.operators[ids]):
            if pending:
                counts[i], pending = len(_ESC), False
            else:
                pending = ids[i] == table.esc_id
    return counts


def _piece_spans(sp, data: bytes) -> np.ndarray:
    """Byte offsets (begin, end) of every piece's surface in `data`."""
    if hasattr(sp, "encode_as_offset_mapping"):  # sentencepiece >= 0.2.1
        offsets = sp.encode(data, out_type="offset_mapping", return_bytes=True)["offsets"]
        return np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    # sentencepiece 0.2.0 (older images): immutable protos with character offsets, mapped to byte offsets
    pieces = sp.encode_as_immutable_proto(data).pieces
    spans = np.array([(p.begin, p.end) for p in pieces], dtype=np.int64).reshape(-1, 2)
    char_starts = np.flatnonzero((np.frombuffer(data, np.uint8) & 0xC0) != 0x80)
    return np.append(char_starts, len(data))[spans]


def _general_sidecar(sp, data: bytes) -> np.ndarray:
    """The sidecar from SentencePiece's piece offsets (any normalization): the original bytes between them."""
    weight = np.ones(len(data), np.int64)
    escaped = False
    for op in _OPERATOR_BYTES.finditer(data):
        if escaped:  # the literal after an ESC keeps its bytes
            escaped = False
            continue
        weight[op.start() : op.end()] = 0
        escaped = op.group() == _ESC
    total = np.concatenate(([0], np.cumsum(weight)))
    spans = _piece_spans(sp, data)
    return total[spans[:, 1]] - total[spans[:, 0]]


def encode_ids(sp, text: str) -> np.ndarray:
    """Token ids of the document's CaseOps transform (no BOS)."""
    return np.asarray(sp.encode(caseops.encode_utf8(text.encode())), dtype=np.int32)


def tokenize_doc(sp, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the CaseOps-transformed document (no BOS) and each token's original UTF-8 byte count."""
    data = caseops.encode_utf8(text.encode())
    id_list = sp.encode(data)
    ids = np.asarray(id_list, dtype=np.int32)
    counts = _fast_sidecar(piece_table(sp), data, id_list, ids)
    if counts is None:
        counts = _general_sidecar(sp, data)
    return ids, counts


# --- the stage: documents -> shards + manifest -------------------------------------------------------------

_SHARD_FILE = re.compile(r"fineweb_(train|val|val_bytes)_\d{6}\.bin")
_worker_sp = None


def _init_worker(tokenizer_path):
    global _worker_sp
    _worker_sp = load(tokenizer_path)


def _tokenize_chunk(split: str, first_doc: int, texts: list) -> tuple[np.ndarray, np.ndarray | None]:
    """BOS + ids for each document of a chunk (and the val sidecar, BOS entries 0), as uint16 arrays."""
    tokens, sidecar = [], []
    bos, no_bytes = np.array([BOS_ID], np.int32), np.zeros(1, np.int64)
    for index, text in enumerate(texts, first_doc):
        try:
            if split == "val":
                ids, counts = tokenize_doc(_worker_sp, text)
                if counts.size and counts.max() > MAX_SIDECAR:
                    raise PgolfError(
                        f"val document {index}: one token covers {counts.max():,} original bytes, more than the "
                        f"uint16 byte sidecar holds ({MAX_SIDECAR:,}, a huge whitespace run); shorten or drop it"
                    )
                sidecar += (no_bytes, counts)
            else:
                ids = encode_ids(_worker_sp, text)
        except UnicodeEncodeError as e:
            raise PgolfError(f"document {index}: not valid Unicode ({e}); fix or drop it in the source") from None
        tokens += (bos, ids)
    return np.concatenate(tokens).astype(np.uint16), np.concatenate(sidecar).astype(np.uint16) if sidecar else None


def _tasks(documents, val_docs: int):
    """(split, index of the first document, texts): about CHUNK_CHARS of text each, never across the split."""
    batch, chars, first = [], 0, 0
    for index, doc in enumerate(documents):
        if batch and (chars >= CHUNK_CHARS or index == val_docs):
            yield ("val" if first < val_docs else "train"), first, batch
            batch, chars, first = [], 0, index
        batch.append(doc)
        chars += len(doc)
    if batch:
        yield ("val" if first < val_docs else "train"), first, batch


def _ordered_map(tasks, workers: int, tokenizer_path):
    """Results of _tokenize_chunk in task order; at most 2 tasks per worker in flight (flat memory)."""
    if workers <= 1:
        _init_worker(tokenizer_path)
        for task in tasks:
            yield task, _tokenize_chunk(*task)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer_path,)) as pool:
        pending = collections.deque()
        for task in tasks:
            pending.append((task, pool.apply_async(_tokenize_chunk, task)))
            if len(pending) >= 2 * workers:
                task, result = pending.popleft()
                yield task, result.get()
        while pending:
            task, result = pending.popleft()
            yield task, result.get()


class ShardWriter:
    """Fills shards of `shard_tokens` tokens in order; documents run on across shard boundaries."""

    def __init__(self, folder: Path, split: str, shard_tokens: int):
        self.folder, self.split = folder, split
        self.buffer = np.empty(shard_tokens, np.uint16)
        self.fill = 0
        self.entries = []

    def add(self, tokens: np.ndarray):
        while tokens.size:
            take = min(tokens.size, self.buffer.size - self.fill)
            self.buffer[self.fill : self.fill + take] = tokens[:take]
            self.fill += take
            tokens = tokens[take:]
            if self.fill == self.buffer.size:
                self.flush()

    def flush(self):
        if self.fill:
            name = shard_name(self.split, len(self.entries))
            entry = write_shard(self.folder / name, self.buffer[: self.fill])
            self.entries.append({**entry, "path": name})
            self.fill = 0


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(enabled: bool):
    """tqdm on stderr; none where tqdm is not installed (the lent GPU image) or not wanted."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(unit="doc", file=sys.stderr, disable=not enabled, mininterval=2.0, desc="tokenize")


def remove_shards(folder: Path):
    for path in folder.glob("fineweb_*.bin"):
        if _SHARD_FILE.fullmatch(path.name):
            path.unlink()


def build(cfg, tokenizer_path, out, docs_path=None, workers=None, progress=True) -> dict:
    """Tokenize the configured documents into shards beside `out` and write the manifest `out` last."""
    cfg = data_config(cfg)
    out, tokenizer_path = Path(out), Path(tokenizer_path)
    folder = out.parent
    if not tokenizer_path.resolve().is_relative_to(folder.resolve()):
        raise PgolfError(
            f"{tokenizer_path}: the tokenizer must lie in the dataset folder {folder} (manifest paths stay inside "
            f"it); copy it to {folder / 'tokenizer.model'} (the tokenizer stage puts it there) and pass that"
        )
    sp = load(tokenizer_path)
    validate(sp, tokenizer_path)
    folder.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    remove_shards(folder)
    writers = {split: ShardWriter(folder, split, cfg.shard_tokens) for split in ("val", "val_bytes", "train")}
    docs = {"val": 0, "train": 0}
    bar = _progress_bar(progress)
    try:
        tasks = _tasks(iter_documents(cfg, docs_path), cfg.val_docs)
        for (split, _, texts), (tokens, sidecar) in _ordered_map(tasks, workers or os.cpu_count() or 1, tokenizer_path):
            writers[split].add(tokens)
            if sidecar is not None:
                writers["val_bytes"].add(sidecar)
            docs[split] += len(texts)
            bar.update(len(texts))
        corpus = docs_path or (cfg.local.path if cfg.source == "local" else f"the {cfg.source} corpus")
        if docs["train"] == 0:
            raise PgolfError(
                f"{corpus}: holds {docs['val']:,} documents, but data.val_docs takes {cfg.val_docs:,} for val and "
                "leaves none to train on; lower data.val_docs (or add documents)"
            )
        for writer in writers.values():
            writer.flush()
    except BaseException:
        remove_shards(folder)
        raise
    finally:
        bar.close()
    manifest = {
        "dataset": cfg.name,
        "source": cfg.source,
        "tokenizer": {"path": os.path.relpath(tokenizer_path, folder), "sha256": file_sha256(tokenizer_path)},
        "vocab_size": sp.get_piece_size(),
        "val_docs": docs["val"],
        "train_docs": docs["train"],
        "bos_id": BOS_ID,
        "caseops": True,
        "text_transform": caseops.TRANSFORM_NAME,
        "shard_tokens": cfg.shard_tokens,
        "shards": {split: writer.entries for split, writer in writers.items()},
    }
    write_json(out, manifest)
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.tokenize", description=doc_summary(__doc__))
    parser.add_argument("--config", required=True, help="resolved config (JSON text or file) with `data`")
    parser.add_argument("--tokenizer", required=True, help="resources/data/<ds>/tokenizer.model")
    parser.add_argument("--out", required=True, help="resources/data/<ds>/manifest.json (shards go beside it)")
    parser.add_argument("--docs", help="document file to read instead of the configured source")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    args = parser.parse_args(argv)
    config = load_stage_config(args.config)
    log = RunLog("tokenize", config)
    manifest = build(config, args.tokenizer, args.out, args.docs, args.workers)
    tokens = {split: sum(e["tokens"] for e in entries) for split, entries in manifest["shards"].items()}
    log.write(
        {"event": "done", "docs": {"val": manifest["val_docs"], "train": manifest["train_docs"]}, "tokens": tokens}
    )


if __name__ == "__main__":
    run_cli(main)
