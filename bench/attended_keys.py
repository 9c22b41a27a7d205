"""Attention work per token: the trainer's document cuts against the record loader's, on a tokenized corpus.

    python bench/attended_keys.py --manifest resources/data/bench-caseops/manifest.json [--seq-len 2048]

The training stream in micro-batches of 48 x 2,048 tokens. pgolf's trainer cuts attention segments at every BOS and
every row start (`pgolf.attention.segment_offsets` on the (48, 2,048) rows); the record's DocumentPackingLoader
(record-stack.md §4) cuts the flat 98,304-token stream at every BOS and splits a document longer than seq_len every
seq_len tokens from its start. Prints, for both, the segments per micro-batch and the mean number of keys a query
attends to (the attention term of the MFU's FLOPs), CPU only.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from pgolf.attention import segment_offsets
from pgolf.shards import BOS_ID, load_split


def mean_keys(lengths: np.ndarray) -> float:
    lengths = lengths.astype(np.float64)
    return float((lengths * (lengths + 1) / 2).sum() / lengths.sum())


def record_segments(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Segment lengths of one flat micro-batch: cut at the span start and every BOS, each piece then split every
    seq_len tokens from its start."""
    starts = np.union1d(np.flatnonzero(stream == BOS_ID), [0])
    pieces = np.diff(np.append(starts, len(stream)))
    full, rest = pieces // seq_len, pieces % seq_len
    return np.concatenate([np.repeat(seq_len, full.sum()), rest[rest > 0]])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=48, help="rows per micro-batch")
    args = parser.parse_args(argv)
    tokens = load_split(args.manifest, "train")
    size = args.rows * args.seq_len
    ours, record = [], []
    for start in range(0, len(tokens) - size + 1, size):
        stream = tokens[start : start + size].astype(np.int64)
        cuts = segment_offsets(torch.from_numpy(stream).view(args.rows, args.seq_len)).numpy()
        ours.append(np.diff(cuts))
        record.append(record_segments(stream, args.seq_len))
    print(f"{args.manifest}: {len(ours)} micro-batches of {args.rows} x {args.seq_len} tokens")
    print("| cuts | segments per micro-batch | mean attended keys per query |")
    print("|---|---|---|")
    rules = {"pgolf: BOS + row starts": ours, "record: BOS + every seq_len from a document's start": record}
    for name, segments in rules.items():
        print(f"| {name} | {np.mean([len(s) for s in segments]):.1f} | {mean_keys(np.concatenate(segments)):.1f} |")


if __name__ == "__main__":
    main()
