"""Tokenization speed: tokenize_doc (ids + exact byte sidecar) against bare sp.encode, and the CLI path.

    python bench/tokenize_speed.py [--docs bench/data/bench-docs.parquet] [--tokenizer MODEL] [--workers 1 2]

Part 1, one core: per document, `tokenize_doc` (CaseOps transform, ids, sidecar) and, as the floor, bare
`sp.encode` of the already-transformed document, interleaved in batches of 100 documents so that load on a
shared machine hits both alike; CPU seconds of this process. Part 2: the tokenize stage's `build` (val
documents with the sidecar, the rest ids only, shards written) with each worker count, wall seconds.
Prints markdown tables for bench/RESULTS.md.
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pgolf import caseops  # noqa: E402
from pgolf import tokenize as tok  # noqa: E402
from pgolf.sources import iter_documents  # noqa: E402
from pgolf.tokenizer import load  # noqa: E402

MODEL = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"


def first_existing(*paths):
    return next((p for p in paths if p.exists()), paths[0])


def single_core(sp, docs):
    transformed = [caseops.encode(d) for d in docs]
    table = tok.piece_table(sp)
    runs = {
        "bare sp.encode (transformed text)": (sp.encode, transformed),
        "tokenize_doc (transform + ids + sidecar)": (lambda d: tok.tokenize_doc(sp, d), docs),
        "sidecar from SentencePiece offsets only (no fast path)": (
            lambda d: tok._general_sidecar(sp, caseops.encode_utf8(d.encode())),
            docs,
        ),
        "encode_ids (transform + ids, train docs)": (lambda d: tok.encode_ids(sp, d), docs),
        "caseops.encode alone": (caseops.encode, docs),
    }
    seconds = dict.fromkeys(runs, 0.0)
    for start in range(0, len(docs), 100):
        for name, (fn, items) in runs.items():
            t0 = time.process_time()
            for item in items[start : start + 100]:
                fn(item)
            seconds[name] += time.process_time() - t0
    fast = 0
    for d in docs:
        data = caseops.encode_utf8(d.encode())
        ids = sp.encode(data)
        fast += tok._fast_sidecar(table, data, ids, np.asarray(ids, dtype=np.int32)) is not None
    return seconds, fast


def cli_path(docs_path, model, workers, val_docs, shard_tokens):
    cfg = {"source": "local", "local": {"path": str(docs_path)}, "val_docs": val_docs, "shard_tokens": shard_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = tok.build(cfg, model, Path(tmp) / "manifest.json", workers=workers, progress=False)
        wall = time.perf_counter() - t0
    tokens = sum(e["tokens"] for split in ("train", "val") for e in manifest["shards"][split])
    return wall, tokens, manifest["val_docs"] + manifest["train_docs"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--docs",
        type=Path,
        default=first_existing(
            ROOT / "bench/data/bench-docs.parquet", ROOT.parent / "shared/corpus/bench-docs.parquet"
        ),
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=first_existing(ROOT / "bench/data" / MODEL, ROOT.parent / "shared/reference/upstream-1855" / MODEL),
    )
    parser.add_argument("--limit", type=int, default=None, help="documents for part 1 (default all)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--val-docs", type=int, default=500)
    args = parser.parse_args()

    sp = load(args.tokenizer)
    corpus = list(iter_documents({"source": "local", "local": {"path": str(args.docs)}}))
    corpus_mb = sum(len(d.encode()) for d in corpus) / 1e6
    docs = corpus[: args.limit]
    mb = sum(len(d.encode()) for d in docs) / 1e6
    print(
        f"{len(docs):,} documents, {mb:.1f} MB, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, sentencepiece {__import__('sentencepiece').__version__}\n"
    )
    seconds, fast = single_core(sp, docs)
    floor = seconds["bare sp.encode (transformed text)"]
    print("| one core (CPU s, interleaved) | seconds | MB/s | throughput vs bare sp.encode |")
    print("|---|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.2f} | {mb / s:.2f} | {floor / s:.3f} |")
    print(f"\nsidecar fast path: {fast:,} of {len(docs):,} documents (the rest from SentencePiece's offsets)\n")

    print(f"| tokenize stage (build: {args.val_docs} val docs with sidecar, rest ids) | wall s | MB/s | tokens/s |")
    print("|---|---|---|---|")
    for workers in args.workers:
        wall, tokens, count = cli_path(args.docs, args.tokenizer, workers, args.val_docs, 10**8)
        print(
            f"| --workers {workers} ({count:,} docs, {tokens:,} tokens) | {wall:.2f} | {corpus_mb / wall:.2f} | {tokens / wall:,.0f} |"
        )


if __name__ == "__main__":
    main()
