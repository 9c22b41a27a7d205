"""The training step's fused kernels (pgolf.kernels) on the GPU: checked against float64 autograd of the unfused
definition, then forward + backward timed against the unfused code compiled by torch.compile, at the record's
shapes (one 98,304-token micro-batch: logits 98,304 x 8,192; MLP 512 -> 2,048 -> 512).

    python bench/fused_kernels.py [--rows 98304] [--out fused.json]

Prints one table: kernel, check (max error of the output and gradients against float64, relative to the largest
reference value, within 1e-2), ms of the fused and of the compiled unfused forward + backward (median of 20).
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from cuda_timing import median_ms  # bench/, on the path of a script run from it

from pgolf import kernels

CAP, SLOPE, VOCAB, DIM, HIDDEN = 30.0, 0.5, 8192, 512, 2048
CHECK_ROWS = 4096
PER_TILE = "mlp, one program per tile"  # kernels.MLP_PERSISTENT off: the layout the tests interpret
TOLERANCE = 1e-2  # relative to the largest reference value: bf16 outputs carry 8 mantissa bits


def unfused_ce(logits, targets):
    return F.cross_entropy(CAP * torch.tanh(logits.float() / CAP), targets)


def unfused_mlp(x, up, down):
    return F.linear(F.leaky_relu(F.linear(x, up), SLOPE).square(), down)


def fused_ce(logits, targets):
    return kernels.softcapped_ce(logits, targets, CAP)


def fused_mlp(x, up, down):
    return kernels.mlp(x, up, down, SLOPE)


def forward_backward(fn, inputs, grad_weight=None):
    leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*leaves)
    (out if grad_weight is None else out * grad_weight).sum().backward()
    return out.detach(), [x.grad for x in leaves if x.is_floating_point()]


def max_errors(fn, reference, inputs, grad_weight) -> list[float]:
    """max |fn - float64 reference| / max |reference| of the output and each gradient."""
    out, grads = forward_backward(fn, inputs, grad_weight)
    as64 = [x.double() if x.is_floating_point() else x for x in inputs]
    ref, ref_grads = forward_backward(reference, as64, None if grad_weight is None else grad_weight.double())
    pairs = zip([out, *grads], [ref, *ref_grads])
    return [((a.double() - b).abs().max() / b.abs().max()).item() for a, b in pairs]


def cases(rows: int, device):
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(torch.bfloat16)

    logits, targets = randn(rows, VOCAB, scale=8.0), torch.randint(0, VOCAB, (rows,), generator=g, device=device)
    x, up, down = randn(rows, DIM), randn(HIDDEN, DIM, scale=DIM**-0.5), randn(DIM, HIDDEN, scale=HIDDEN**-0.5)
    mlp_weight = randn(rows, DIM)
    return {
        "softcapped_ce": (fused_ce, unfused_ce, [logits, targets], None),
        "mlp": (fused_mlp, unfused_mlp, [x, up, down], mlp_weight),
        PER_TILE: (fused_mlp, unfused_mlp, [x, up, down], mlp_weight),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=98304)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    rows = []
    for name, (fused, unfused, inputs, weight) in cases(args.rows, device).items():
        kernels.MLP_PERSISTENT = name != PER_TILE
        head = [x[:CHECK_ROWS] if x.size(0) == args.rows else x for x in inputs]
        errors = max_errors(fused, unfused, head, None if weight is None else weight[:CHECK_ROWS])
        compiled = torch.compile(unfused, dynamic=False)
        rows.append(
            {
                "kernel": name,
                "max_error": [float(f"{e:.3g}") for e in errors],
                "passed": max(errors) <= TOLERANCE,
                "fused_ms": round(median_ms(lambda: forward_backward(fused, inputs, weight), 20, warmup=3), 3),
                "compiled_unfused_ms": round(
                    median_ms(lambda: forward_backward(compiled, inputs, weight), 20, warmup=3), 3
                ),
            }
        )
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; {args.rows:,} rows")
    print("| kernel | max relative error vs float64 (output, grads) | check | fused ms | compiled unfused ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['kernel']} | {r['max_error']} | {'pass' if r['passed'] else 'FAIL'} | {r['fused_ms']} | "
            f"{r['compiled_unfused_ms']} |"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
