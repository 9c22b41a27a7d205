"""Attention work per token under the trainer's two packings (`train.packing`), on a tokenized corpus.

    python bench/attended_keys.py --manifest resources/data/bench-caseops/manifest.json [--seq-len 2048]

The training stream in micro-batches of 48 x 2,048 tokens, cut as `pgolf.train.pack` cuts them. rows: (48, 2,048)
rows cut at every BOS and every row start. stream: the record's DocumentPackingLoader (docs/record-stack.md §4), one row
cut at every BOS and every seq_len tokens from a document's start. Prints, for both, the segments per micro-batch
and the mean number of keys a query attends to (the attention term of the MFU's FLOPs), CPU only.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from pgolf.shards import load_split
from pgolf.train import PACKINGS, pack


def mean_keys(lengths: np.ndarray) -> float:
    lengths = lengths.astype(np.float64)
    return float((lengths * (lengths + 1) / 2).sum() / lengths.sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=48, help="rows per micro-batch")
    args = parser.parse_args(argv)
    tokens = torch.from_numpy(load_split(args.manifest, "train").astype(np.int64))
    size = args.rows * args.seq_len
    segments = {packing: [] for packing in PACKINGS}
    for start in range(0, len(tokens) - size + 1, size):
        for packing, lengths in segments.items():
            lengths.append(torch.diff(pack(tokens[start : start + size], args.seq_len, packing)[1]).numpy())
    print(f"{args.manifest}: {len(segments['rows'])} micro-batches of {args.rows} x {args.seq_len} tokens")
    print("| train.packing | segments per micro-batch | mean attended keys per query |")
    print("|---|---|---|")
    for packing, lengths in segments.items():
        print(f"| {packing} | {np.mean([len(x) for x in lengths]):.1f} | {mean_keys(np.concatenate(lengths)):.1f} |")


if __name__ == "__main__":
    main()
