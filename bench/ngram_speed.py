"""Seconds and memory of the exact n-gram hints (pgolf.ngram.hints) on a val-stream-sized token stream.

    python bench/ngram_speed.py [--tokens 47851520] [--order 16] [--threshold 0.8] [--repeats 3]
                                [--shard PATH ...] [--probe-cuts 3]

Pinned to one core. Without --shard the stream is synthetic with text-like repetition: Zipf-distributed
tokens interleaved with spans copied from earlier in the stream (most from anywhere, some from a small pool
of boilerplate passages that recur), tuned so that the gated share lands near FineWeb val's 1.31%
(docs/record-stack.md §8.3). With --shard the tokens of the given pgolf/upstream shards are used instead.
Upstream's C hash table takes ~150-170 s for the 47,851,520-token val stream inside the eval timer.
"""

import argparse
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pgolf.ngram import causality_probe, hints  # noqa: E402
from pgolf.shards import read_shard  # noqa: E402


def synthetic_stream(n: int, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf tokens with copied spans: 1.4% of tokens copied (mean span 48), a third of them boilerplate."""
    ranks = np.arange(1, vocab + 1)
    weights = 1.0 / (ranks + 20.0) ** 1.1
    stream = rng.choice(vocab, size=n, p=weights / weights.sum()).astype(np.uint16)
    boilerplate = [(int(rng.integers(0, n // 100)), int(rng.integers(20, 200))) for _ in range(300)]
    pos = n // 100
    while True:
        pos += int(rng.geometric(1 / 4000))
        span = int(rng.geometric(1 / 48)) + 8
        if pos + span > n:
            return stream
        if rng.random() < 1 / 3:
            src, span = boilerplate[int(rng.integers(len(boilerplate)))]
        else:
            src = int(rng.integers(0, pos - span))
        span = min(span, n - pos)
        stream[pos : pos + span] = stream[src : src + span]
        pos += span


def measure(fn):
    tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    seconds = (time.perf_counter() - wall, time.process_time() - cpu)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=47_851_520)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--order", type=int, default=16)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe-cuts", type=int, default=3)
    parser.add_argument("--shard", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    rng = np.random.default_rng(0)
    if args.shard:
        tokens, source = np.concatenate([read_shard(p) for p in args.shard]), f"shards ({len(args.shard)})"
    else:
        tokens, source = synthetic_stream(args.tokens, args.vocab, rng), "synthetic"
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}, python {platform.python_version()}")
    print(f"stream: {source}, {tokens.size:,} tokens, order {args.order}, threshold {args.threshold}\n")
    print("| run | wall s | CPU s | peak MiB | hinted share | gated share |")
    print("|---|---|---|---|---|---|")
    for run in range(args.repeats):
        (hint, gated), seconds, peak = measure(lambda: hints(tokens, args.order, args.threshold))
        print(
            f"| hints {run + 1} | {seconds[0]:.2f} | {seconds[1]:.2f} | {peak / 2**20:,.0f} "
            f"| {np.mean(hint >= 0):.4%} | {gated.mean():.4%} |"
        )
    if args.probe_cuts:
        probe, seconds, peak = measure(
            lambda: causality_probe(tokens, args.order, args.threshold, args.probe_cuts, rng, full=(hint, gated))
        )
        print(
            f"| causality probe, {args.probe_cuts} cuts (identical: {probe['identical']}) "
            f"| {seconds[0]:.2f} | {seconds[1]:.2f} | {peak / 2**20:,.0f} | | |"
        )


if __name__ == "__main__":
    main()
