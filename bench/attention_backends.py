"""Every attention backend usable on this card, checked against the math reference, then timed on the record's
micro-batch.

    python bench/attention_backends.py --manifest resources/data/bench-caseops/manifest.json [--out attention.json]

Check (per backend): a 8,192-token row of the bench corpus cut as the trainer cuts it (train.packing stream, split
every 2,048 tokens from a document's start), random bf16 q/k/v with the record's heads (8 query, 4 key/value, dim
64); the forward output and the q/k/v gradients of a random upstream gradient, each against sdpa's math kernel
in float64 with the dense document-causal mask, as ||x - ref|| / ||ref|| (bf16 operands: 1e-3 to 1e-2 is right;
a backend fails above 2e-2 or on a non-finite value).
Timing: forward + backward of one micro-batch (one 98,304-token row, the trainer's cuts), median of 20 after 5
warm-ups, CUDA events. Each backend runs in its own process, so a kernel that faults cannot take the others down.
Prints a table last.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from cuda_timing import median_ms  # bench/, on the path of a script run from it

from pgolf import attention
from pgolf.shards import read_shard, shard_paths
from pgolf.train import pack

HEADS, KV_HEADS, HEAD_DIM, SEQ_LEN = 8, 4, 64, 2048
CHECK_TOKENS, TIME_TOKENS = 8192, 48 * 2048
TOLERANCE = 2e-2


def corpus_row(manifest: Path, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `tokens` training tokens (1, tokens) and their cuts, as pgolf.train.pack makes them (stream)."""
    stream = read_shard(shard_paths(manifest, "train")[0])[: tokens + 1]
    ids, cu = pack(torch.as_tensor(stream[:tokens].astype("int64")), SEQ_LEN, "stream")
    return ids, cu


def qkv(tokens: int, device, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    shapes = [(1, tokens, HEADS, HEAD_DIM), (1, tokens, KV_HEADS, HEAD_DIM), (1, tokens, KV_HEADS, HEAD_DIM)]
    return [torch.randn(s, device=device, dtype=dtype, generator=g) for s in shapes]


def run_backend(name: str, ids, cu, q, k, v, grad):
    backend = attention.resolve_backend(name, q.device, compiled=False)
    layout = attention.build_layout(ids, backend, {None}, cu_seqlens=cu, max_seqlen=SEQ_LEN)
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = attention.attend(backend, q, k, v, layout)
    out.backward(grad)
    return out.detach(), q.grad, k.grad, v.grad


def reference(ids, cu, q, k, v, grad):
    """sdpa's math kernel in float64 with the dense document-causal mask, on the CPU."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mask = attention.document_mask(attention.segment_ids(cu.cpu(), *ids.shape), None)
    q, k, v = (t.detach().cpu().double().transpose(1, 2).requires_grad_() for t in (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    out.backward(grad.cpu().double().transpose(1, 2))
    return [t.transpose(1, 2) for t in (out.detach(), q.grad, k.grad, v.grad)]


def check(name: str, manifest: Path) -> dict:
    device = torch.device("cuda")
    ids, cu = corpus_row(manifest, CHECK_TOKENS)
    ids, cu = ids.to(device), cu.to(device)
    q, k, v = qkv(CHECK_TOKENS, device)
    grad = qkv(CHECK_TOKENS, device, seed=1)[0]
    got = run_backend(name, ids, cu, q, k, v, grad)
    ref = reference(ids, cu, q, k, v, grad)
    errors = {}
    for what, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        a = a.detach().cpu().double()
        errors[what] = float((a - b).norm() / b.norm())
    passed = all(e == e and e <= TOLERANCE for e in errors.values())  # e == e: not NaN
    return {"errors": {k: f"{e:.2e}" for k, e in errors.items()}, "passed": passed}


def timing(name: str, manifest: Path) -> dict:
    device = torch.device("cuda")
    ids, cu = corpus_row(manifest, TIME_TOKENS)
    ids, cu = ids.to(device), cu.to(device)
    q, k, v = qkv(TIME_TOKENS, device)
    grad = torch.randn_like(q)
    ms = median_ms(lambda: run_backend(name, ids, cu, q, k, v, grad), 20, warmup=5)
    return {"fwd_bwd_ms": round(ms, 3), "segments": len(cu) - 1}


def one(name: str, manifest: Path) -> dict:
    result = {"backend": name}
    try:
        result.update(check(name, manifest))
        result.update(timing(name, manifest))
    except Exception as e:  # a backend this card or torch build cannot run: say so and go on
        result["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--backends", default=",".join(b for b in attention.BACKENDS if b != "sdpa"))
    parser.add_argument("--only", help=argparse.SUPPRESS)  # the per-backend child process
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.only:
        print(json.dumps(one(args.only, args.manifest)))
        return
    results = []
    for name in args.backends.split(","):
        child = subprocess.run(
            [sys.executable, __file__, "--manifest", str(args.manifest), "--only", name], capture_output=True, text=True
        )
        lines = child.stdout.strip().splitlines()
        results.append(
            json.loads(lines[-1])
            if child.returncode == 0 and lines
            else {
                "backend": name,
                "error": f"exit {child.returncode}: " + " | ".join(child.stderr.strip().splitlines()[-3:])[:300],
            }
        )
        if args.out:
            args.out.write_text(
                json.dumps(
                    {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "results": results}, indent=1
                )
                + "\n"
            )
    print(
        f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}; check: {CHECK_TOKENS} tokens vs float64 "
        f"math (tolerance {TOLERANCE}); timing: fwd+bwd of a {TIME_TOKENS:,}-token micro-batch"
    )
    print("| backend | out | dq | dk | dv | check | layout+fwd+bwd ms |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r and "errors" not in r:
            print(f"| {r['backend']} | | | | | not usable: {r['error'][:120]} | |")
            continue
        e = r["errors"]
        verdict = "pass" if r["passed"] else "FAIL"
        print(
            f"| {r['backend']} | {e['out']} | {e['dq']} | {e['dk']} | {e['dv']} | {verdict} | "
            f"{r.get('fwd_bwd_ms', r.get('error', ''))} |"
        )


if __name__ == "__main__":
    main()
