"""Unpack of a record-size .pgrp against its floor, `lrzip -d` of the same group streams.

    python bench/unpack.py [--pgrp model.pgrp] [--keep synthetic.pgrp] [--layers 11] [--vocab 8192] [--seed 0]

Without --pgrp it packs bench/pack.py's synthetic record-shaped state first (and times that; --keep saves the blob
for the next call). Then, for the same blob:
  - floor: one `lrzip -d` process per group stream, all started at once (as unpack runs them), wall seconds and
    the CPU seconds of the lrzip processes;
  - unpack: pgolf.pack.unpack, wall seconds, CPU seconds of this process (Python, numpy, torch, brotli) and of its
    lrzip children;
  - Python part: unpack with lrzip's outputs handed over, i.e. everything unpack does besides lrzip;
  - the lrzip block table of the largest stream (`lrzip -i`): a ZPAQ block decompresses on one core, so the largest
    block bounds the floor however many cores there are.
CPU seconds stay comparable on a loaded machine where wall seconds do not.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgolf import pack as P  # noqa: E402


def cpu(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def timed(fn):
    """fn's result, wall seconds, CPU seconds of this process and of its finished children."""
    self0, child0, start = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    return out, wall, cpu(resource.RUSAGE_SELF) - self0, cpu(resource.RUSAGE_CHILDREN) - child0


def floor(streams: dict, tmp: Path) -> dict:
    """Every group stream through `lrzip -d` at once; {group: decompressed bytes}."""
    procs = {}
    for group in P.GROUPS:
        if streams[group]:
            (tmp / f"{group}.lrz").write_bytes(streams[group])
            cmd = ["lrzip", "-d", "-q", "-f", "-o", str(tmp / f"{group}.out"), str(tmp / f"{group}.lrz")]
            procs[group] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for proc in procs.values():
        if proc.wait() != 0:
            raise SystemExit("lrzip -d failed")
    return {group: (tmp / f"{group}.out").read_bytes() if group in procs else b"" for group in P.GROUPS}


def main():
    parser = argparse.ArgumentParser(description="Time pgolf.pack.unpack against lrzip -d of the same streams.")
    parser.add_argument("--pgrp", type=Path, help="a model.pgrp; default: pack the synthetic state")
    parser.add_argument("--keep", type=Path, help="save the synthetic blob here")
    parser.add_argument("--layers", type=int, default=11)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"cores {P.cores()}  load {os.getloadavg()[0]:.1f}  lrzip {P.lrzip_binary()}")
    rows = []
    if args.pgrp:
        data = args.pgrp.read_bytes()
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from pack import synthetic_state

        data, *t = timed(lambda: P.pack(synthetic_state(args.layers, args.vocab, args.seed)))
        rows.append(("pack (synthetic state)", *t))
        if args.keep:
            args.keep.write_bytes(data)
    streams = P.split_streams(data)
    with tempfile.TemporaryDirectory(prefix="pgolf-unpack-bench-") as tmp:
        blobs, *t = timed(lambda: floor(streams, Path(tmp)))
        rows.append(("floor: lrzip -d, all groups at once", *t))
        largest = max(P.GROUPS, key=lambda g: len(streams[g]))
        info = subprocess.run(
            ["lrzip", "-i", "-vv", str(Path(tmp) / f"{largest}.lrz")], capture_output=True, text=True
        ).stdout
    state, *t = timed(lambda: P.unpack(data))
    rows.append(("pgolf.pack.unpack", *t))
    original = P.lrzip_decompress
    try:
        by_stream = {streams[g]: blobs[g] for g in P.GROUPS}
        P.lrzip_decompress = lambda stream, source: by_stream[stream]
        again, *t = timed(lambda: P.unpack(data))
        rows.append(("unpack without lrzip (Python part)", *t))
    finally:
        P.lrzip_decompress = original
    assert all(again["tensors"][k].equal(v) for k, v in state["tensors"].items())
    print(f"{len(data):,} bytes, {len(state['tensors'])} tensors; load {os.getloadavg()[0]:.1f} after\n")
    print("| step | wall s | CPU s (this process) | CPU s (lrzip) |")
    print("|---|---|---|---|")
    for name, wall, own, children in rows:
        print(f"| {name} | {wall:.1f} | {own:.1f} | {children:.1f} |")
    blocks = [line for line in info.splitlines() if "zpaq" in line or line.startswith("Block")]
    print(f"\nlrzip blocks of the largest stream ({largest}):\n" + "\n".join(blocks))


if __name__ == "__main__":
    main()
