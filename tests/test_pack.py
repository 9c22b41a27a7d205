"""PGRP packing: exact greedy chain, container format, round trips and one clear error per bad input."""

import json
import struct

import brotli
import numpy as np
import pytest
import torch

from pgolf import pack as P
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

    # The remainder is a JSON header plus raw bytes, not a pickle, and holds config, meta and shapes.
    rest = brotli.decompress(streams["remainder"])
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
    with pytest.raises(PgolfError, match="model.pgrp: .*corrupt"):
        P.unpack(bytes(flipped), source="model.pgrp")
    flipped = bytearray(blob)
    flipped[table + 30] ^= 0xFF  # inside the tok_emb lrzip stream
    with pytest.raises(PgolfError, match=r"model.pgrp \(tok_emb\)|model.pgrp: group tok_emb"):
        P.unpack(bytes(flipped), source="model.pgrp")


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
