"""FlexAttention's kernel options at the record's attention shape, forward + backward, on one GPU.

    python bench/flex_options.py --manifest resources/data/bench-caseops/manifest.json [--repeats 20] [--out F]

One micro-batch of the record (the first 48 x 2,048 training tokens of the manifest, so the document-causal block
mask is the bench corpus's; 8 query heads, 4 KV heads, head dim 64, bf16): the median ms of forward plus backward
of a compiled flex_attention for torch's default options and for each entry of OPTIONS (pgolf.attention's
FLEX_KERNEL_OPTIONS among them), and each one's largest output difference from the default's. Prints a table.
"""

import argparse
import json
from pathlib import Path

import torch
from cuda_timing import median_ms  # bench/, on the path of a script run from it
from torch.nn.attention.flex_attention import flex_attention

from pgolf.attention import FLEX_KERNEL_OPTIONS, _flex_block_mask, document_ids
from pgolf.shards import load_split

OPTIONS = [
    {},  # torch's choice
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M1": 64, "BLOCK_N1": 128, "BLOCK_M2": 128, "BLOCK_N2": 64, "num_warps": 8, "num_stages": 3},
    FLEX_KERNEL_OPTIONS,  # what the flex backend passes
    # the same backward, the forward's warps and stages left to torch ("bwd_" keys reach the backward alone)
    {"BLOCK_M1": 32, "BLOCK_N1": 128, "BLOCK_M2": 128, "BLOCK_N2": 32, "bwd_num_warps": 4, "bwd_num_stages": 3},
    {"BLOCK_M1": 64, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M1": 64, "BLOCK_N1": 128, "BLOCK_M2": 128, "BLOCK_N2": 64, "num_warps": 8, "num_stages": 2},
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    tokens = torch.from_numpy(load_split(args.manifest, "train")[: args.rows * args.seq_len].astype("int64"))
    ids = tokens.view(args.rows, args.seq_len).to(device)
    mask = _flex_block_mask(document_ids(ids), None)
    torch.manual_seed(0)
    q = torch.randn(args.rows, 8, args.seq_len, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(args.rows, 4, args.seq_len, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
            for _ in range(2))  # fmt: skip
    grad = torch.randn_like(q)

    rows, reference = [], None
    for options in OPTIONS:
        attend = torch.compile(flex_attention, dynamic=False)

        def step():
            for t in (q, k, v):
                t.grad = None
            y = attend(q, k, v, block_mask=mask, enable_gqa=True, kernel_options=options or None)
            y.backward(grad)
            return y

        try:
            y = step().detach()
            torch.cuda.synchronize()
        except Exception as e:  # an option set this GPU cannot run (shared memory): say so and go on
            rows.append({"options": options, "failed": f"{type(e).__name__}: {str(e)[:120]}"})
            continue
        reference = y if reference is None else reference
        rows.append(
            {"options": options, "ms": median_ms(step, args.repeats), "max_diff": float((y - reference).abs().max())}
        )
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(device), "rows": rows}, indent=1) + "\n")
    print(
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; {args.rows} x {args.seq_len} tokens, "
        "document-causal, 8/4 heads of 64, bf16, forward + backward"
    )
    print("| kernel_options | ms | max |diff| to the default's output |")
    print("|---|---|---|")
    for r in rows:
        result = f"failed | {r['failed']}" if "failed" in r else f"{r['ms']:.3f} | {r['max_diff']:.1e}"
        print(f"| {json.dumps(r['options']) if r['options'] else 'default'} | {result} |")


if __name__ == "__main__":
    main()
