"""The fused LeakyReLU² MLP (pgolf.fused_mlp) against Inductor's compiled MLP, forward + backward, on one GPU.

    python bench/fused_mlp.py [--tokens 98304] [--repeats 20] [--out fused_mlp.json]

One micro-batch of the record (48 x 2,048 tokens, d 512, hidden 2,048, bf16): the median time of forward plus
backward for `torch.compile` of the unfused MLP and for the fused kernels under each tile shape in TILE_SHAPES, and
each one's largest error against an fp32 reference (relative to that tensor's largest magnitude). Prints a table.
"""

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from pgolf import fused_mlp

SLOPE = 0.5
# (block_m, block_n, block_k, num_warps, num_stages, persistent); the first is pgolf.fused_mlp.TILES
TILE_SHAPES = [
    (256, 128, 64, 8, 3, False),
    (128, 256, 64, 8, 3, False),
    (256, 128, 64, 8, 3, True),
    (128, 256, 64, 8, 3, True),
    (128, 256, 64, 8, 4, True),
    (128, 128, 64, 8, 4, True),
    (128, 128, 64, 4, 4, True),
    (128, 256, 128, 8, 2, True),
]


def unfused(x, up_w, down_w):
    return F.linear(F.leaky_relu(F.linear(x, up_w), SLOPE).square(), down_w)


def fused(x, up_w, down_w):
    return fused_mlp.mlp(x, up_w, down_w, SLOPE)


def forward_backward(fn, inputs, grad):
    for t in inputs:
        t.grad = None
    fn(*inputs).backward(grad)


def median_ms(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def errors(fn, inputs, grad, reference) -> dict:
    forward_backward(fn, inputs, grad)
    out = fn(*inputs).float()
    got = [out] + [t.grad.float() for t in inputs]
    return {name: float((g.detach() - r).abs().max() / r.abs().max()) for name, g, r in zip(("out", "dx", "dup", "ddown"),
                                                                                   got, reference)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=48 * 2048)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    torch.manual_seed(0)
    x = torch.randn(args.tokens, args.dim, device=device)
    up_w = torch.randn(args.hidden, args.dim, device=device) / args.dim**0.5
    down_w = torch.randn(args.dim, args.hidden, device=device) / args.hidden**0.5
    grad = torch.randn(args.tokens, args.dim, device=device)

    exact = [t.clone().requires_grad_() for t in (x, up_w, down_w)]
    out = unfused(*exact)
    out.backward(grad)
    reference = [out.detach()] + [t.grad for t in exact]
    inputs = [t.bfloat16().requires_grad_() for t in (x, up_w, down_w)]
    grad = grad.bfloat16()

    compiled = torch.compile(unfused)
    rows = [{"variant": "torch.compile, unfused", "ms": median_ms(lambda: forward_backward(compiled, inputs, grad),
                                                                  args.repeats),
             "errors": errors(compiled, inputs, grad, reference)}]
    for shape in TILE_SHAPES:
        fused_mlp.TILES = fused_mlp.Tiles(*shape[:3], num_warps=shape[3], num_stages=shape[4], persistent=shape[5])
        try:
            ms = median_ms(lambda: forward_backward(fused, inputs, grad), args.repeats)
        except Exception as e:  # a tile shape this GPU cannot hold (shared memory): say so and go on
            rows.append({"variant": f"fused {shape}", "failed": f"{type(e).__name__}: {str(e)[:120]}"})
            continue
        rows.append({"variant": f"fused {shape}", "ms": ms, "errors": errors(fused, inputs, grad, reference),
                     "tiles": dataclasses.asdict(fused_mlp.TILES)})

    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(device), "args": vars(args) | {"out": None},
                                        "rows": rows}, indent=1) + "\n")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; {args.tokens:,} tokens, d {args.dim}, "
          f"hidden {args.hidden}, bf16, forward + backward")
    print("| variant (block_m, block_n, block_k, warps, stages, persistent) | ms | max rel. error out / dx / dup / ddown |")
    print("|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['variant']} | failed | {r['failed']} |")
        else:
            print(f"| {r['variant']} | {r['ms']:.3f} | {' / '.join(f'{v:.1e}' for v in r['errors'].values())} |")


if __name__ == "__main__":
    main()
