"""PGRP packing: exact greedy chain, container format, round trips and one clear error per bad input."""

import hashlib
import json
import shutil
import signal
import struct
import time

import brotli
import numpy as np
import pytest
import torch

from pgolf import artifact_index
from pgolf import pack as P
from pgolf import pack_shuffle as S
from pgolf.errors import PgolfError

LAYERS = 3
SHAPES = {
    "attn.c_q": (32, 24),
    "attn.c_k": (16, 24),
    "attn.c_v": (16, 24),
    "attn.proj": (24, 32),
    "mlp.fc": (48, 24),
    "mlp.proj": (24, 48),
}


def codes(gen, rows, cols, limit=31):
    return torch.randint(-limit, limit + 1, (rows, cols), generator=gen).to(torch.int8)


def record_like_state(seed=0):
    """A small state shaped like quantize's output: group matrices plus every kind of remainder tensor."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {"tok_emb.weight.q": codes(gen, 40, 24, 63), "tok_emb.weight.scale": torch.rand(40).half()}
    for i in reversed(range(LAYERS)):  # insertion order must not matter
        for key, (rows, cols) in SHAPES.items():
            tensors[f"blocks.{i}.{key}.weight.q"] = codes(gen, rows, cols)
            tensors[f"blocks.{i}.{key}.weight.scale"] = torch.rand(rows).half()
        tensors[f"blocks.{i}.attn.attn_gate_w.q"] = codes(gen, 8, 12, 127)
        tensors[f"blocks.{i}.attn.q_gain"] = torch.rand(8).half()
    tensors["blocks.0.mlp.fc.weight.lqA_a"] = codes(gen, 48, 4, 1)
    tensors["blocks.0.mlp.fc.weight.lqAs_a"] = torch.tensor(0.25).half()
    tensors["blocks.0.mlp.fc.weight.awqg_start"] = torch.tensor([64], dtype=torch.int16)
    tensors["odd.bf16"] = torch.randn(3, 5).bfloat16()
    tensors["odd.f64"] = torch.randn(2, dtype=torch.float64)
    tensors["odd.bool"] = torch.tensor([True, False, True])
    tensors["odd.empty"] = torch.zeros(0, 4)
    tensors["odd.int8_1d.weight.q"] = codes(gen, 1, 5)[0]
    meta = {"tok_emb.weight": "gptq (int7)+lqer_asym", "blocks.0.mlp.fc.weight": "gptq (int6)+awq (int8)"}
    config = {"vocab_size": 40, "num_layers": LAYERS, "windows": (1024, 2048), "gates": [True, None], "lr": 0.25}
    return {"tensors": tensors, "meta": meta, "config": config}


def assert_same_state(got, want):
    assert set(got["tensors"]) == set(want["tensors"])
    for name, t in want["tensors"].items():
        u = got["tensors"][name]
        assert (u.dtype, tuple(u.shape)) == (t.dtype, tuple(t.shape)), name
        assert torch.equal(u, t), name
    assert got["meta"] == want["meta"]
    assert got["config"] == want["config"]
    assert type(got["config"]["windows"]) is tuple


def slow_chain(rows):
    """The definition, step by step: nearest unused row by L1, strict < so ties keep the lowest index."""
    x = rows.numpy().astype(np.int64)
    order, used = [0], {0}
    while len(order) < len(x):
        best, best_d = None, None
        for j in range(len(x)):
            if j not in used:
                d = int(np.abs(x[j] - x[order[-1]]).sum())
                if best_d is None or d < best_d:
                    best, best_d = j, d
        order.append(best)
        used.add(best)
    return order


@pytest.mark.parametrize("limit,rows,cols", [(1, 40, 3), (1, 25, 1), (31, 50, 16), (127, 33, 7)])
@pytest.mark.parametrize("block_rows", [None, 1, 7])
def test_chain_equals_slow_greedy(limit, rows, cols, block_rows):
    gen = torch.Generator().manual_seed(rows * cols + limit)
    x = codes(gen, rows, cols, limit)
    x[5] = x[11]  # a duplicate row: distance 0, must be picked by index order
    assert P.nn_chain(x, block_rows=block_rows).tolist() == slow_chain(x)


def test_chain_edge_sizes():
    assert P.nn_chain(torch.zeros(0, 4, dtype=torch.int8)).tolist() == []
    assert P.nn_chain(torch.zeros(1, 4, dtype=torch.int8)).tolist() == [0]
    assert P.nn_chain(torch.zeros(4, 4, dtype=torch.int8)).tolist() == [0, 1, 2, 3]  # all tied


def test_pairwise_l1_exact():
    x = codes(torch.Generator().manual_seed(1), 20, 512, 127)
    want = (x[:, None, :].int() - x[None, :, :].int()).abs().sum(-1).numpy()
    assert np.array_equal(P.pairwise_l1(x, block_rows=3), want)


def test_round_trip():
    state = record_like_state()
    assert_same_state(P.unpack(P.pack(state)), state)


def test_container_layout():
    state = record_like_state(1)
    data = P.pack(state)
    assert data[:4] == b"PGRP"
    count, *lengths = struct.unpack_from("<10I", data, 4)
    assert count == 9 and 8 + 4 * 9 + sum(lengths) == len(data)
    streams = P.split_streams(data)
    t = state["tensors"]

    # A cold group: transposed matrices of layers 0..n, straight.
    want = b"".join(t[f"blocks.{i}.attn.c_k.weight.q"].T.contiguous().numpy().tobytes() for i in range(LAYERS))
    assert P.lrzip_decompress(streams["attn.c_k"], "test") == want

    # Hot groups: rows in greedy chain order, then transposed; orders as uint16 in group/layer order.
    names = ["tok_emb.weight.q"]
    names += [f"blocks.{i}.attn.c_q.weight.q" for i in range(LAYERS)]
    names += [f"blocks.{i}.mlp.fc.weight.q" for i in range(LAYERS)]
    orders = [slow_chain(t[n]) for n in names]
    assert brotli.decompress(streams["perms"]) == b"".join(np.array(o, "<u2").tobytes() for o in orders)
    want = b"".join(t[n][o].T.contiguous().numpy().tobytes() for n, o in zip(names[1:4], orders[1:4]))
    assert P.lrzip_decompress(streams["attn.c_q"], "test") == want

    # The remainder is sealed: uint64 length, payload, sha256 over both and every other stream with its length.
    sealed = brotli.decompress(streams["remainder"])
    (length,) = struct.unpack_from("<Q", sealed)
    assert len(sealed) == 8 + length + 32
    covered = sealed[: 8 + length] + b"".join(
        struct.pack("<Q", len(streams[n])) + streams[n] for n in P.GROUPS + ("perms",)
    )
    assert sealed[-32:] == hashlib.sha256(covered).digest()
    # Its payload is a JSON header plus raw bytes, not a pickle, and holds config, meta and shapes.
    rest = sealed[8 : 8 + length]
    (size,) = struct.unpack_from("<I", rest)
    header = json.loads(rest[4 : 4 + size])
    assert header["meta"] == state["meta"] and header["config"]["num_layers"] == LAYERS
    assert [row[0] for row in header["groups"][5]] == names[4:]
    grouped = {row[0] for group in header["groups"] for row in group}
    assert "blocks.0.attn.attn_gate_w.q" not in grouped and "odd.int8_1d.weight.q" not in grouped


def test_missing_groups_are_empty_streams():
    gen = torch.Generator().manual_seed(2)
    tensors = {f"blocks.{i}.mlp.proj.weight.q": codes(gen, 4, 6) for i in (10, 2)}
    state = {"tensors": tensors, "meta": {}, "config": {}}
    data = P.pack(state)
    sizes = P.stream_sizes(data)
    assert [n for n, s in sizes.items() if s] == ["mlp.proj", "remainder"]
    want = b"".join(state["tensors"][f"blocks.{i}.mlp.proj.weight.q"].T.contiguous().numpy().tobytes() for i in (2, 10))
    assert P.lrzip_decompress(P.split_streams(data)["mlp.proj"], "test") == want
    got = P.unpack(data)
    assert got["tensors"].keys() == state["tensors"].keys()
    assert all(torch.equal(got["tensors"][k], v) for k, v in state["tensors"].items())


@pytest.fixture(scope="module")
def blob():
    return P.pack(record_like_state(3))


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda b: b"PGRZ" + b[4:], "not a PGRP container"),
        (lambda b: b[:20], "truncated"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\0", "stream lengths add up to"),
        (lambda b: b[:4] + struct.pack("<I", 8) + b[8:], "8 streams, expected 9"),
    ],
)
def test_bad_container(blob, mutate, message):
    with pytest.raises(PgolfError, match=message):
        P.unpack(mutate(blob), source="model.pgrp")


def test_corrupt_streams(blob):
    sizes = P.stream_sizes(blob)
    table = 8 + 4 * 9
    rest_at = table + sum(sizes[g] for g in P.GROUPS)
    flipped = bytearray(blob)
    flipped[rest_at + 2] ^= 0xFF
    with pytest.raises(PgolfError, match="model.pgrp: .*corrupt|model.pgrp: integrity check failed"):
        P.unpack(bytes(flipped), source="model.pgrp")
    flipped = bytearray(blob)
    flipped[table + 30] ^= 0xFF  # inside the tok_emb lrzip stream: the seal catches it before lrzip runs
    with pytest.raises(PgolfError, match=r"model.pgrp: integrity check failed .* changed after packing"):
        P.unpack(bytes(flipped), source="model.pgrp")


# --- a sealed blob whose contents lie: the checks behind the seal ---------------------------------------------


def sealed_parts(blob):
    """(streams, remainder header, remainder tensor bytes) of a blob."""
    streams = P.split_streams(blob)
    sealed = brotli.decompress(streams["remainder"])
    payload = sealed[8:-32]
    (size,) = struct.unpack_from("<I", payload)
    return streams, json.loads(payload[4 : 4 + size]), payload[4 + size :]


def reseal(streams, header, raw):
    """A container of these streams and this remainder, sealed as pack seals it (so only the deeper checks see it)."""
    text = json.dumps(header).encode()
    streams = dict(streams)
    streams["remainder"] = P.brotli_compress(P._seal(struct.pack("<I", len(text)) + text + raw, streams))
    ordered = [streams[n] for n in P.STREAMS]
    return P.MAGIC + struct.pack("<10I", 9, *map(len, ordered)) + b"".join(ordered)


def test_reseal_round_trips(blob):
    assert_same_state(P.unpack(reseal(*sealed_parts(blob))), P.unpack(blob))


def test_duplicate_row_order_index_is_refused(blob):
    streams, header, raw = sealed_parts(blob)
    perms = bytearray(brotli.decompress(streams["perms"]))
    perms[2:4] = perms[0:2]  # tok_emb's order names its first row twice, its second never
    streams["perms"] = P.brotli_compress(bytes(perms))
    with pytest.raises(PgolfError, match=r"model.pgrp: the row order of tok_emb.weight.q is not a permutation"):
        P.unpack(reseal(streams, header, raw), "model.pgrp")


def edit(path, value):
    def apply(header):
        target = header
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


@pytest.mark.parametrize(
    "change,message",
    [
        (edit(["tensors", 0, 1], "save"), "is not \\[name, dtype, shape\\]"),
        (edit(["tensors", 0, 1], ["float16"]), "is not \\[name, dtype, shape\\]"),
        (edit(["tensors", 0, 2], [-1]), "is not \\[name, dtype, shape\\]"),
        (edit(["tensors", 0, 2], [2**31, 2**31, 2**31]), "exceed the size limit"),
        (edit(["tensors", 0, 2], [True]), "is not \\[name, dtype, shape\\]"),
        (edit(["tensors", 1, 0], "tok_emb.weight.q"), "appears twice"),
        (edit(["groups", 0, 0, 1], "40"), "not \\[name, rows, cols\\]"),
        (edit(["groups", 0, 0, 1], 0), "not \\[name, rows, cols\\]"),
        (edit(["groups", 0, 0, 0], "blocks.0.mlp.fc.weight.q"), "not its own"),
        (edit(["groups", 0, 0, 1], 1 << 17), "row orders hold at most"),
        (edit(["groups"], [[]] * 6), "not a list of 7"),
        (edit(["meta", "x"], 3), "meta is not a mapping"),
        (edit(["config"], [1]), "config is not a mapping"),
        (lambda h: h.pop("tensors"), "header lacks"),
    ],
)
def test_header_edits_are_refused(blob, change, message, tmp_path):
    """A blob made elsewhere (eval.artifact) has its header checked when the DAG adopts it; unpack reads a header
    under an intact seal as it is (the DAG's own blobs and the script's)."""
    streams, header, raw = sealed_parts(blob)
    change(header)
    edited = reseal(streams, header, raw)
    with pytest.raises(PgolfError, match=f"model.pgrp: .*{message}"):
        P.check_blob(edited, "model.pgrp")
    (tmp_path / "model.pgrp").write_bytes(edited)
    with pytest.raises(PgolfError, match=f"model.pgrp: .*{message}"):
        artifact_index.index(tmp_path / "model.pgrp", tmp_path / "adopted/model.pgrp")
    assert not (tmp_path / "adopted").exists()
    P.check_blob(blob)  # the untouched blob passes


def test_group_shape_edit_is_refused(blob):
    streams, header, raw = sealed_parts(blob)
    header["groups"][1][0][1] += 1  # attn.c_k layer 0 claims one more row than its stream holds
    with pytest.raises(PgolfError, match=r"model.pgrp \(attn.c_k\): lrzip stream decodes to \d+ bytes, the shapes"):
        P.unpack(reseal(streams, header, raw), "model.pgrp")


def test_brotli_bombs_stop_at_the_declared_size(blob):
    streams, header, raw = sealed_parts(blob)
    bomb = brotli.compress(b"\0" * (64 << 20), quality=1)
    assert len(bomb) < 100_000
    streams["perms"] = bomb
    with pytest.raises(PgolfError, match="model.pgrp: permutation stream is corrupt .*decodes past its declared"):
        P.unpack(reseal(streams, header, raw), "model.pgrp")
    # a remainder that decodes past the length it declares: the seal is never even computed over it
    streams = P.split_streams(blob)
    sealed = brotli.decompress(streams["remainder"])
    streams["remainder"] = brotli.compress(sealed + b"\0" * (64 << 20), quality=1)
    ordered = [streams[n] for n in P.STREAMS]
    bombed = P.MAGIC + struct.pack("<10I", 9, *map(len, ordered)) + b"".join(ordered)
    with pytest.raises(PgolfError, match="model.pgrp: remainder stream is corrupt .*decodes past its declared"):
        P.unpack(bombed, "model.pgrp")


def test_lrzip_stream_of_another_size_is_refused(blob):
    streams, header, raw = sealed_parts(blob)
    streams["attn.c_k"] = P.lrzip_compress(b"\1" * 100_000)
    with pytest.raises(PgolfError, match=r"\(attn.c_k\): lrzip stream decodes to 100000 bytes, the shapes need"):
        P.unpack(reseal(streams, header, raw), "model.pgrp")


def fake_lrzip(tmp_path, monkeypatch, body):
    script = tmp_path / "lrzip"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))


def test_lrzip_is_killed_past_its_time(blob, tmp_path, monkeypatch):
    fake_lrzip(tmp_path, monkeypatch, f"exec {shutil.which('sleep')} 30")
    monkeypatch.setattr(P, "LRZIP_SECONDS", 0.3)
    start = time.monotonic()
    with pytest.raises(PgolfError, match=r"model.pgrp \(\S+\): lrzip -d ran past its 0 s limit"):
        P.unpack(blob, "model.pgrp")
    assert time.monotonic() - start < 10


def test_lrzip_is_killed_past_its_declared_output(blob, tmp_path, monkeypatch):
    # the output file is the argument after -o; the fake writes zeros without end
    cat = shutil.which("cat")
    fake_lrzip(tmp_path, monkeypatch, f'while [ "$1" != "-o" ]; do shift; done; exec {cat} /dev/zero > "$2"')
    with pytest.raises(PgolfError, match=r"model.pgrp \(\S+\): lrzip -d wrote more than the \d+ bytes"):
        P.unpack(blob, "model.pgrp")


def mutations(blob, count, seed):
    """Bit flips, truncations, insertions and stream-table edits, `count` of each kind, reproducibly."""
    rng = np.random.default_rng(seed)
    n = len(blob)
    for _ in range(count):
        b = bytearray(blob)
        b[rng.integers(n)] ^= 1 << rng.integers(8)
        yield "flip", bytes(b)
        yield "truncate", blob[: rng.integers(n)]
        at = rng.integers(n + 1)
        yield "insert", blob[:at] + bytes(rng.integers(0, 256, rng.integers(1, 9), dtype=np.uint8)) + blob[at:]
        b = bytearray(blob)
        field = 4 * rng.integers(1, 11)  # the stream count or one of the nine lengths
        value = int.from_bytes(b[field : field + 4], "little")
        value = [value + 1, value - 1, 0, 2**32 - 1, int(rng.integers(2**32))][rng.integers(5)] % 2**32
        b[field : field + 4] = value.to_bytes(4, "little")
        yield "table", bytes(b)
        b = bytearray(blob)  # a swap of two stream lengths keeps the total
        i, j = 8 + 4 * rng.choice(9, 2, replace=False)
        b[i : i + 4], b[j : j + 4] = b[j : j + 4], b[i : i + 4]
        yield "swap", bytes(b)


def test_fuzz_only_clean_errors_or_the_exact_state(blob):
    """Hundreds of damaged blobs: each is refused with one PgolfError naming the file, or (a mutation that changed
    nothing that matters) loads exactly the original state. A hang trips the alarm."""
    want = P.unpack(blob)
    kinds = {}
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("unpack hung on a mutated blob"))
    signal.alarm(120)
    try:
        for kind, data in mutations(blob, 80, seed=23):
            try:
                got = P.unpack(data, "fuzz.pgrp")
            except PgolfError as e:
                assert str(e).startswith("fuzz.pgrp"), str(e)
                kinds.setdefault(kind, [0, 0])[0] += 1
            else:
                assert_same_state(got, want)
                kinds.setdefault(kind, [0, 0])[1] += 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert sum(refused for refused, _ in kinds.values()) >= 390, kinds


def test_missing_lrzip(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PgolfError, match="lrzip: binary not found on PATH; install it"):
        P.pack(record_like_state())


def test_bad_state():
    with pytest.raises(PgolfError, match='"tensors", "meta", "config"'):
        P.pack({"tensors": {}})
    with pytest.raises(PgolfError, match="config.f is a set"):
        P.pack({"tensors": {}, "meta": {}, "config": {"f": {1}}})


def test_cli_and_verify(tmp_path):
    state = record_like_state(4)
    torch.save(state, tmp_path / "quantized.pt")
    P.main(["--quantized", str(tmp_path / "quantized.pt"), "--out", str(tmp_path / "model.pgrp")])
    info = json.loads((tmp_path / "pack.json").read_text())
    data = P.verify(tmp_path / "model.pgrp", tmp_path / "pack.json")
    assert info["total_bytes"] == len(data) and info["streams"] == P.stream_sizes(data)
    assert info["cores"] >= 1 and info["seconds"] > 0 and info["brotli_baseline_bytes"] > 0
    assert_same_state(P.unpack(data), state)
    (tmp_path / "model.pgrp").write_bytes(data[:-1] + b"x")
    with pytest.raises(PgolfError, match="differs from .*pack.json"):
        P.verify(tmp_path / "model.pgrp", tmp_path / "pack.json")
    with pytest.raises(PgolfError, match="missing.pt: file not found"):
        P.main(["--quantized", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pgrp")])
    assert not (tmp_path / "x.pgrp").exists()


def test_artifact_index_adopts_a_clean_blob_and_refuses_others(blob, tmp_path):
    (tmp_path / "outside.pgrp").write_bytes(blob)
    artifact_index.main(["--pgrp", str(tmp_path / "outside.pgrp"), "--out", str(tmp_path / "adopted/model.pgrp")])
    info = json.loads((tmp_path / "adopted/pack.json").read_text())
    assert (tmp_path / "adopted/model.pgrp").read_bytes() == blob
    assert info == {
        "streams": P.stream_sizes(blob),
        "total_bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "source": str(tmp_path / "outside.pgrp"),
    }
    assert P.verify(tmp_path / "adopted/model.pgrp", tmp_path / "adopted/pack.json") == blob
    (tmp_path / "bad.pgrp").write_bytes(blob[:-1])
    with pytest.raises(PgolfError, match="bad.pgrp: truncated"):
        artifact_index.index(tmp_path / "bad.pgrp", tmp_path / "refused/model.pgrp")
    with pytest.raises(PgolfError, match="absent.pgrp: artifact not found"):
        artifact_index.index(tmp_path / "absent.pgrp", tmp_path / "refused/model.pgrp")
    assert not (tmp_path / "refused").exists()


def slow_shuffle(data: bytes, stride: int) -> bytes:
    """#1572's layout spelled out: every byte at offset k (mod stride), for k = 0, 1, ..., after the header."""
    out = bytearray(b"BSHF" + bytes([stride]))
    for k in range(stride):
        for i in range(k, len(data), stride):
            out.append(data[i])
    return bytes(out)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000, 1001])
@pytest.mark.parametrize("stride", [2, 3])
def test_byte_shuffle_layout_and_round_trip(n, stride):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    shuffled = S.byte_shuffle(data, stride)
    assert shuffled == (data if n < stride else slow_shuffle(data, stride))
    assert S.byte_unshuffle(shuffled) == data


def test_brotli_shuffle_round_trip_and_format():
    state = record_like_state()
    blob = P.pack_as(state, "brotli_shuffle")
    assert blob[:4] != P.MAGIC
    raw = S.byte_unshuffle(brotli.decompress(blob))
    assert brotli.decompress(blob)[:5] == b"BSHF\x02"
    assert set(torch.load(__import__("io").BytesIO(raw), weights_only=True)) == {"w", "m", "c"}
    assert_same_state(P.unpack_artifact(blob), state)
    assert P.artifact_streams(blob) == {"brotli_shuffle": len(blob)}
    with pytest.raises(PgolfError, match="no PGRP or PLZM magic .*not a brotli_shuffle stream"):
        P.unpack_artifact(blob[: len(blob) // 2], "x.pgrp")
    with pytest.raises(PgolfError, match="holds no quantized state"):
        P.unpack_artifact(brotli.compress(S.byte_shuffle(b"not a torch.save archive")), "x.pgrp")
    with pytest.raises(PgolfError, match="not one of"):
        P.pack_as(state, "zstd")


def test_lrzip_parts_cut_long_groups_and_round_trip():
    """A group longer than part_bytes becomes b"LRZS" + count + lengths + lrzip streams of its bytes in order,
    near-equal; shorter groups stay one plain lrzip stream; unpack gives the same state as lrzip_groups."""
    from pgolf.lrzip_parts import PART_BYTES

    state = record_like_state(2)
    plain = P.split_streams(P.pack(state))
    part_bytes = 1000  # mlp.fc: 3 x 48 x 24 = 3,456 bytes -> 4 parts; attn.c_k: 1,152 -> 2; tok_emb: 960, whole
    data = P.pack(state, part_bytes=part_bytes)
    assert_same_state(P.unpack(data), state)
    streams = P.split_streams(data)
    for group in P.GROUPS:
        whole = P.lrzip_decompress(plain[group], "test")
        stream = streams[group]
        if len(whole) <= part_bytes:
            assert stream[:4] == b"LRZI"
            continue
        assert stream[:4] == b"LRZS"
        (count,) = struct.unpack_from("<I", stream, 4)
        lengths = struct.unpack_from(f"<{count}I", stream, 8)
        assert count == -(-len(whole) // part_bytes) and 8 + 4 * count + sum(lengths) == len(stream)
        at, parts = 8 + 4 * count, []
        for length in lengths:
            parts.append(P.lrzip_decompress(stream[at : at + length], "test"))
            at += length
        assert b"".join(parts) == whole and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert PART_BYTES == 3 << 20  # mlp groups of the record (11.5 MB) in 4 parts, tok_emb (4 MiB) in 2


def test_lrzip_parts_compressor_is_the_record_container_at_record_size(monkeypatch):
    import pgolf.lrzip_parts as L

    monkeypatch.setattr(L, "PART_BYTES", 2000)
    state = record_like_state(3)
    data = P.pack_as(state, "lrzip_parts")
    assert data[:4] == b"PGRP" and P.split_streams(data)["mlp.fc"][:4] == b"LRZS"
    assert_same_state(P.unpack_artifact(data), state)


def test_bad_lrzip_parts_are_refused():
    state = record_like_state(4)
    streams, header, raw = sealed_parts(P.pack(state, part_bytes=1000))
    good = streams["mlp.fc"]
    (count,) = struct.unpack_from("<I", good, 4)
    first = struct.unpack_from("<I", good, 8)[0]
    cases = {
        "truncated lrzip part table": good[:6],
        "1 lrzip parts in": good[:4] + struct.pack("<I", 1) + good[8:],
        "lrzip parts add up to": good[:-1],
        "lrzip part 0 is not an lrzip stream": good[: 8 + 4 * count] + b"NOPE" + good[8 + 4 * count + 4 :],
        "lrzip parts decode to": good[: 8 + 4 * count]
        + good[8 + 4 * count : 8 + 4 * count + 6]
        + struct.pack("<Q", 1)
        + good[8 + 4 * count + 14 :],
    }
    assert first > 14
    for message, stream in cases.items():
        streams["mlp.fc"] = stream
        with pytest.raises(PgolfError, match=rf"model.pgrp \(mlp.fc\): {message}"):
            P.unpack(reseal(streams, header, raw), "model.pgrp")
