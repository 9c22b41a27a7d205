"""Pack and unpack of a record-size .pgrp against the floor, `lrzip -d` of the same lrzip streams, per compressor.

    python bench/unpack.py [--pgrp model.pgrp] [--keep synthetic.pgrp] [--compressor lrzip_groups lrzip_parts]
                           [--layers 11] [--vocab 8192] [--seed 0] [--part-bytes N] [--lrzip-seconds S]

Without --pgrp it packs bench/pack.py's synthetic record-shaped state with each compressor (and times that; --keep
saves the lrzip_groups blob for the next call). Then, for each blob:
  - floor: one `lrzip -d` process per lrzip stream (a group's, or each part of a group cut by lrzip_parts), all
    started at once (as unpack runs them), wall seconds and the CPU seconds of the lrzip processes;
  - unpack: pgolf.pack.unpack, wall seconds, CPU seconds of this process (Python, numpy, torch, brotli) and of its
    lrzip children;
  - Python part: unpack with lrzip's outputs handed over, i.e. everything unpack does besides lrzip;
  - the lrzip block table of the largest stream (`lrzip -i`): a ZPAQ block decompresses on one core, so the largest
    block bounds the floor however many cores there are.
CPU seconds stay comparable on a loaded machine where wall seconds do not. lrzip_groups is #1855's format (one lrzip
stream per group); lrzip_parts cuts groups over pgolf.lrzip_parts.PART_BYTES into streams decoded in parallel.
"""

import argparse
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgolf import lrzip_parts as L  # noqa: E402
from pgolf import pack as P  # noqa: E402

LRZIP = ("lrzip_groups", "lrzip_parts")  # the compressors whose container holds lrzip streams


def cpu(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def timed(fn):
    """fn's result, wall seconds, CPU seconds of this process and of its finished children."""
    self0, child0, start = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    return out, wall, cpu(resource.RUSAGE_SELF) - self0, cpu(resource.RUSAGE_CHILDREN) - child0


def lrzip_streams(streams: dict) -> dict:
    """{file name: (group, one lrzip stream)} in container order: a group cut by lrzip_parts gives one per part."""
    out = {}
    for group in P.GROUPS:
        stream = streams[group]
        if stream[:4] == P.PARTS_MAGIC:
            (count,) = struct.unpack_from("<I", stream, 4)
            at = 8 + 4 * count
            for i, length in enumerate(struct.unpack_from(f"<{count}I", stream, 8)):
                out[f"{group}.part{i}"], at = (group, stream[at : at + length]), at + length
        elif stream:
            out[group] = (group, stream)
    return out


def floor(streams: dict, tmp: Path) -> dict:
    """Every lrzip stream through `lrzip -d` at once; {group: decompressed bytes}."""
    named, procs = lrzip_streams(streams), {}
    for name, (_, stream) in named.items():
        (tmp / f"{name}.lrz").write_bytes(stream)
        cmd = ["lrzip", "-d", "-q", "-f", "-o", str(tmp / f"{name}.out"), str(tmp / f"{name}.lrz")]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for proc in procs.values():
        if proc.wait() != 0:
            raise SystemExit("lrzip -d failed")
    out = dict.fromkeys(P.GROUPS, b"")
    for name, (group, _) in named.items():
        out[group] += (tmp / f"{name}.out").read_bytes()
    return out


def one_blob(label: str, data: bytes, rows: list, tmp: Path):
    """Floor, unpack and its Python part for one blob; appends rows; returns (largest stream, its lrzip -i)."""
    streams = P.split_streams(data)
    blobs, *t = timed(lambda: floor(streams, tmp))
    rows.append((f"{label}: floor, lrzip -d of every stream at once", *t))
    named = lrzip_streams(streams)
    largest = max(named, key=lambda n: len(named[n][1]))
    info = subprocess.run(["lrzip", "-i", "-vv", str(tmp / f"{largest}.lrz")], capture_output=True, text=True).stdout
    state, *t = timed(lambda: P.unpack(data))
    rows.append((f"{label}: pgolf.pack.unpack", *t))
    original = P.lrzip_decompress
    try:
        by_stream = {streams[g]: blobs[g] for g in P.GROUPS}
        P.lrzip_decompress = lambda stream, source, expected=None: by_stream[stream]
        again, *t = timed(lambda: P.unpack(data))
        rows.append((f"{label}: unpack without lrzip (Python part)", *t))
    finally:
        P.lrzip_decompress = original
    assert all(again["tensors"][k].equal(v) for k, v in state["tensors"].items())
    return state, largest, info


def main():
    parser = argparse.ArgumentParser(description="Time pgolf.pack's pack and unpack against lrzip -d of the streams.")
    parser.add_argument("--pgrp", type=Path, help="a model.pgrp; default: pack the synthetic state")
    parser.add_argument("--keep", type=Path, help="save the synthetic lrzip_groups blob here")
    parser.add_argument("--compressor", nargs="+", default=["lrzip_groups", "lrzip_parts"], choices=LRZIP)
    parser.add_argument("--layers", type=int, default=11)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lrzip-seconds", type=float, default=P.LRZIP_SECONDS, help="unpack's lrzip time bound")
    parser.add_argument("--part-bytes", type=int, default=L.PART_BYTES, help="lrzip_parts' cut (for small states)")
    args = parser.parse_args()
    P.LRZIP_SECONDS = args.lrzip_seconds  # a loaded machine can run lrzip slower than the bound allows
    L.PART_BYTES = args.part_bytes
    print(f"cores {P.cores()}  load {os.getloadavg()[0]:.1f}  lrzip {P.lrzip_binary()}")
    rows, blobs = [], {}
    if args.pgrp:
        blobs[args.pgrp.name] = args.pgrp.read_bytes()
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from pack import synthetic_state

        state = synthetic_state(args.layers, args.vocab, args.seed)
        for compressor in args.compressor:
            blobs[compressor], *t = timed(lambda c=compressor: P.pack_as(state, c))
            rows.append((f"{compressor}: pack (synthetic state)", *t))
        if args.keep and "lrzip_groups" in blobs:
            args.keep.write_bytes(blobs["lrzip_groups"])
    states, tables = {}, []
    for label, data in blobs.items():
        with tempfile.TemporaryDirectory(prefix="pgolf-unpack-bench-") as tmp:
            states[label], largest, info = one_blob(label, data, rows, Path(tmp))
        blocks = [line for line in info.splitlines() if "zpaq" in line or line.startswith("Block")]
        tables.append(f"\n{label}: lrzip blocks of the largest stream ({largest}):\n" + "\n".join(blocks))
    first = next(iter(states.values()))
    assert all(s["tensors"][k].equal(v) for s in states.values() for k, v in first["tensors"].items())
    print(f"{len(first['tensors'])} tensors; load {os.getloadavg()[0]:.1f} after")
    print("bytes: " + ", ".join(f"{label} {len(data):,}" for label, data in blobs.items()) + "\n")
    print("| step | wall s | CPU s (this process) | CPU s (lrzip) |")
    print("|---|---|---|---|")
    for name, wall, own, children in rows:
        print(f"| {name} | {wall:.1f} | {own:.1f} | {children:.1f} |")
    print("".join(tables))


if __name__ == "__main__":
    main()
