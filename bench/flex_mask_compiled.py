"""Does torch.compile build the same FlexAttention block mask as eager code? Per packing, on a tokenized corpus.

    python bench/flex_mask_compiled.py --manifest resources/data/bench-caseops/manifest.json [--micro-batches 24]

The first micro-batches of the training stream (48 x 2,048 tokens), cut as `pgolf.train.pack` cuts them; for each,
the BlockMask of `pgolf.attention.build_layout` (flex backend, full window) built eagerly and by the same code under
torch.compile (one compile per packing, the cut count dynamic as in the trainer), on the GPU when there is one.
Prints, per packing, how many micro-batches differ in any of the mask's block tables, compared as the sets of blocks
they list. Why: built inside the compiled training step, this mask came with a NaN loss from step 3 of rows-packed
training on an H200, while eager training did not (bench/RESULTS.md).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pgolf.attention import build_layout, resolve_backend
from pgolf.shards import load_split
from pgolf.train import PACKINGS, pack

TABLES = (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices"), ("q_num_blocks", "q_indices"),
          ("full_q_num_blocks", "full_q_indices"))  # fmt: skip


def block_mask(ids: torch.Tensor, cu: torch.Tensor, backend, max_seqlen: int):
    return build_layout(ids, backend, {None}, cu, max_seqlen).masks[None]


def listed(num_blocks: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """A block table as a dense bool (..., rows, cols): which blocks the first num_blocks entries of a row name."""
    cols = indices.size(-1)
    used = torch.arange(cols, device=indices.device) < num_blocks[..., None]
    dense = torch.zeros(*indices.shape[:-1], cols + 1, dtype=torch.bool, device=indices.device)
    dense.scatter_(-1, torch.where(used, indices, cols).long(), True)  # unused entries land in the spare column
    return dense[..., :cols]


def differing_tables(a, b) -> list[str]:
    """Names of the block tables whose listed blocks differ between two BlockMasks."""
    return [
        num
        for num, idx in TABLES
        if not torch.equal(listed(getattr(a, num), getattr(a, idx)), listed(getattr(b, num), getattr(b, idx)))
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=48, help="rows per micro-batch")
    parser.add_argument("--micro-batches", type=int, default=24, help="the first three steps of the record batch")
    parser.add_argument("--out", type=Path, help="JSON of the counts")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = resolve_backend("flex", device, compiled=True)
    tokens = torch.from_numpy(load_split(args.manifest, "train").astype(np.int64))
    size = args.rows * args.seq_len
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__}
    print(f"{result['device']}, torch {torch.__version__}; {args.micro_batches} micro-batches of {size:,} tokens")
    print("| train.packing | micro-batches whose compiled mask differs | tables that differ |")
    print("|---|---|---|")
    for packing in PACKINGS:
        # a fresh compile: recompiling for the other packing's shapes would make T symbolic, which Inductor's
        # Triton code generation refused on the H200 (CantSplit)
        torch._dynamo.reset()
        compiled = torch.compile(block_mask)
        differing, tables = 0, set()
        for k in range(args.micro_batches):
            ids, cu = pack(tokens[k * size : (k + 1) * size], args.seq_len, packing)
            ids, cu = ids.to(device), cu.to(device)
            torch._dynamo.maybe_mark_dynamic(cu, 0)
            names = differing_tables(block_mask(ids, cu, backend, args.seq_len),
                                     compiled(ids, cu, backend, args.seq_len))  # fmt: skip
            differing += bool(names)
            tables.update(names)
        result[packing] = {"differing": differing, "of": args.micro_batches, "tables": sorted(tables)}
        print(f"| {packing} | {differing} of {args.micro_batches} | {', '.join(sorted(tables)) or '-'} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
