"""Phased score-first TTT speed on one device: a record-shaped model (random weights) on synthetic documents.

    PYTHONPATH=. python bench/ttt_speed.py --docs 640 [--no-compile] [--tilt]

Prints a table: warm-up (compile) seconds, diagnostic eval tokens/s, TTT tokens/s, global-phase seconds, peak
memory, and the TTT eval time projected to the full 47.85M-token val set on 8 such devices.
"""

import argparse
import time

import numpy as np
import torch

from pgolf import ngram
from pgolf.bpb import ValData
from pgolf.dist import init, sync
from pgolf.evaluate import FINEWEB_VAL_TARGETS, EvalConfig, compiled_graphs, prepare, score
from pgolf.model import GPT, ModelConfig
from pgolf.ttt import PhasedTTT


def synthetic_val(docs: int, vocab: int, seed: int = 0) -> ValData:
    """Log-normal document lengths (median ~700 tokens, a long tail), random tokens with repeated phrases."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(6.55, 1.0, size=docs).astype(int), 8, 60_000)
    phrase = rng.integers(2, vocab, size=32)
    parts = []
    for n in lengths:
        body = rng.integers(2, vocab, size=n)
        body[: min(32, n)] = phrase[: min(32, n)]
        parts += [[1], body]
    tokens = np.concatenate(parts).astype(np.int64)
    return ValData(tokens, np.where(tokens == 1, 0, 3).astype(np.int32), docs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=640)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--tilt", action="store_true")
    parser.add_argument("--prefix-docs", type=int, default=128)
    args = parser.parse_args()
    dist = init(1 if torch.cuda.is_available() else 0)
    torch.manual_seed(0)
    model = GPT(ModelConfig())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    cfg = EvalConfig.parse({"compile": not args.no_compile, "ttt": {"prefix_docs": args.prefix_docs}})
    val = synthetic_val(args.docs, model.config.vocab_size)
    model = prepare(model, dist)
    ttt = PhasedTTT(model, val, cfg.ttt, dist, compile=cfg.compile)
    rows = []
    t0 = time.perf_counter()
    if ttt.compiled:
        ttt.warmup()
    rows.append(("warm-up (compile) s", time.perf_counter() - t0))
    t0 = time.perf_counter()
    diag = score(model, val, cfg, dist)
    sync(dist.device)
    rows.append(("diagnostic eval tokens/s", val.targets / (time.perf_counter() - t0)))
    t0 = time.perf_counter()
    hints = ngram.hints(val.tokens, 16, 0.8) if args.tilt else None
    graphs = compiled_graphs()
    result = ttt.run(hints, 2.625)
    sync(dist.device)
    seconds = time.perf_counter() - t0
    graphs = compiled_graphs() - graphs
    probe = result.probe
    rows += [
        ("val targets", val.targets),
        ("TTT eval s (timer)", seconds),
        ("graphs compiled inside the timer", graphs),
        ("of which global phases s", result.seconds["global_sgd"]),
        ("TTT tokens/s", val.targets / seconds),
        ("score-first probe passed", probe["passed"]),
        (
            "probe max diff before / after update",
            f"{probe['max_abs_diff_before_update']:.2e} / {probe['max_abs_diff_after_update']:.2e}",
        ),
        ("diag bpb / ttt bpb", f"{diag['val_bpb']:.4f} / {result.totals['val_bpb']:.4f}"),
        ("projected full val on 8 devices s", FINEWEB_VAL_TARGETS / (val.targets / seconds) / 8),
    ]
    if dist.device.type == "cuda":
        rows.append(("peak memory GiB", torch.cuda.max_memory_allocated() / 2**30))
    print(f"| {'measure':40s} | value |\n|{'-' * 42}|-------|")
    for name, value in rows:
        print(f"| {name:40s} | {value:.4g} |" if isinstance(value, float) else f"| {name:40s} | {value} |")


if __name__ == "__main__":
    main()
