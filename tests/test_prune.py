"""#1512's pruning + lzma (pgolf.prune): the round trip, the pruning order against a sort of Python tuples, and
the size search against a scan of every count.

    pytest tests/test_prune.py
"""

import json
import lzma

import pytest
import torch
import yaml

from pgolf.errors import PgolfError
from pgolf.prune import (
    HEADER,
    LZMA_MAGIC,
    MAX_STATE_BYTES,
    apply_pruning,
    lzma_pack,
    lzma_unpack,
    prune_order,
    prune_to_target,
)

from conftest import ROOT


def toy_state(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tensors, meta = {}, {}
    for name, shape in (("blocks.0.mlp.fc.weight", (6, 10)), ("blocks.0.attn.c_q.weight", (4, 8))):
        tensors[f"{name}.q"] = torch.randint(-31, 32, shape, generator=g).to(torch.int8)
        tensors[f"{name}.scale"] = (torch.rand(shape[0], generator=g) * 0.1 + 0.01).to(torch.float16)
        meta[name] = "gptq (int6)"
    tensors["tok_emb.weight.q"] = torch.randint(-127, 128, (5, 8), generator=g).to(torch.int8)
    tensors["tok_emb.weight.scale"] = torch.rand(5, generator=g).to(torch.float16)
    meta["tok_emb.weight"] = "gptq (int8)"
    tensors["skip_weights"] = torch.randn(2, 8, generator=g).half()
    meta["skip_weights"] = "passthrough (fp16)"
    return {"tensors": tensors, "meta": meta, "config": {"num_layers": 1}}


def test_lzma_round_trip_is_exact():
    state = toy_state()
    back = lzma_unpack(lzma_pack(state), "toy")
    assert back["meta"] == state["meta"] and back["config"] == state["config"]
    assert all(torch.equal(back["tensors"][k], v) for k, v in state["tensors"].items())
    with pytest.raises(PgolfError, match="toy: not an lzma_pruned artifact"):
        lzma_unpack(b"not lzma at all", "toy")


def test_lzma_reader_is_bounded_by_the_declared_size():
    blob = lzma_pack(toy_state())
    _, declared = HEADER.unpack_from(blob)
    body = blob[HEADER.size :]
    cases = {
        "decodes past its declared": HEADER.pack(LZMA_MAGIC, declared - 1) + body,
        "gives .* of .* declared bytes": HEADER.pack(LZMA_MAGIC, declared + 1) + body,
        "trailing bytes": blob + b"x",
        "no end marker": blob[:-30],
        "over the .* limit": HEADER.pack(LZMA_MAGIC, MAX_STATE_BYTES + 1) + body,
    }
    for message, bad in cases.items():
        with pytest.raises(PgolfError, match=f"toy: .*{message}"):
            lzma_unpack(bad, "toy")
    with pytest.raises(PgolfError, match="toy: the lzma stream holds no"):
        raw = b"not a torch file"
        lzma_unpack(HEADER.pack(LZMA_MAGIC, len(raw)) + lzma.compress(raw), "toy")


def test_prune_order_matches_a_sort_of_python_tuples():
    state = toy_state(1)
    want = []
    for name in ("blocks.0.mlp.fc.weight", "blocks.0.attn.c_q.weight"):  # meta order; int8 tok_emb never
        q, s = state["tensors"][f"{name}.q"], state["tensors"][f"{name}.scale"].float()
        cols = q.shape[1]
        for i, code in enumerate(q.reshape(-1).tolist()):
            if code:
                want.append((name, i, float(torch.tensor(abs(code), dtype=torch.float32) * s[i // cols])))
    want.sort(key=lambda c: c[2])
    assert prune_order(state) == [(n, i) for n, i, _ in want]


def test_apply_pruning_zeroes_exactly_the_first_codes_and_copies():
    state = toy_state(2)
    order = prune_order(state)
    pruned = apply_pruning(state, order, 7)
    for k, (name, i) in enumerate(order):
        value = pruned["tensors"][f"{name}.q"].view(-1)[i].item()
        assert (value == 0) if k < 7 else value == state["tensors"][f"{name}.q"].view(-1)[i].item()
    assert torch.count_nonzero(state["tensors"]["blocks.0.mlp.fc.weight.q"]) > 0  # the input is untouched
    assert pruned["tensors"]["tok_emb.weight.q"] is state["tensors"]["tok_emb.weight.q"]


def test_size_search_finds_the_fewest_codes_that_fit():
    state = toy_state(3)
    order = prune_order(state)

    def size(s):  # lzma's bytes, as pack measures them
        return len(lzma_pack(s))

    sizes = [size(apply_pruning(state, order, n)) for n in range(0, len(order) + 1, 4)]
    target = (sizes[0] + sizes[-1]) // 2
    count, pruned = prune_to_target(state, target, size)
    assert size(pruned) <= target and count > 0
    assert size(apply_pruning(state, order, count - 1)) > target  # one code fewer does not fit
    assert prune_to_target(state, sizes[0], size) == (0, state)  # already fits: nothing zeroed


def test_size_search_against_a_counting_size():
    state = toy_state(4)
    total = len(prune_order(state))

    def size(s):  # a strictly monotone stand-in: 1,000 bytes per nonzero int6 code
        return 1000 * sum(
            int(torch.count_nonzero(s["tensors"][f"{n}.q"]))
            for n in ("blocks.0.mlp.fc.weight", "blocks.0.attn.c_q.weight")
        )

    for keep in (0, 1, 17, total - 1):
        count, pruned = prune_to_target(state, 1000 * keep, size)
        assert count == total - keep and size(pruned) == 1000 * keep
    with pytest.raises(PgolfError, match="prune_target_bytes"):
        prune_to_target(state, 10, lambda s: 11)


def test_pack_cli_writes_the_pruned_lzma_artifact(tmp_path):
    from pgolf import pack

    state = toy_state(5)
    torch.save(state, tmp_path / "quantized.pt")
    unpruned = len(lzma_pack(state))
    pack.main(
        [
            "--compressor",
            "lzma_pruned",
            "--prune-target",
            str(unpruned - 40),
            "--quantized",
            str(tmp_path / "quantized.pt"),
            "--out",
            str(tmp_path / "model.pgrp"),
            "--no-baseline",
        ]
    )
    info = json.loads((tmp_path / "pack.json").read_text())
    data = pack.verify(tmp_path / "model.pgrp", tmp_path / "pack.json")
    assert info["compressor"] == "lzma_pruned" and len(data) <= unpruned - 40
    assert info["streams"] == pack.artifact_streams(data) == {"lzma_pruned": len(data)}
    back = pack.unpack_artifact(data, "model.pgrp")
    count, want = prune_to_target(state, unpruned - 40, lambda s: len(lzma_pack(s)))
    assert info["pruned_int6_codes"] == count > 0
    assert all(torch.equal(back["tensors"][k], v) for k, v in want["tensors"].items())


def test_pack_refuses_a_prune_target_without_lzma(tmp_path):
    from pgolf import pack

    torch.save(toy_state(), tmp_path / "quantized.pt")
    with pytest.raises(PgolfError, match="prune_target_bytes applies to lzma_pruned only"):
        pack.main(
            [
                "--compressor",
                "brotli_shuffle",
                "--prune-target",
                "1000",
                "--quantized",
                str(tmp_path / "quantized.pt"),
                "--out",
                str(tmp_path / "model.pgrp"),
                "--no-baseline",
            ]
        )
    assert not (tmp_path / "model.pgrp").exists()
    with pytest.raises(SystemExit):
        pack.main(
            [
                "--compressor",
                "lzma_pruned",
                "--prune-target",
                "-3",
                "--quantized",
                str(tmp_path / "quantized.pt"),
                "--out",
                str(tmp_path / "model.pgrp"),
            ]
        )


def recipe_pack() -> dict:
    return yaml.safe_load((ROOT / "recipes" / "pr1512.yaml").read_text())["pack"]


@pytest.fixture(scope="module")
def pr1512_config():
    from pgolf.config import resolve

    return resolve([ROOT / "config.yaml", ROOT / "recipes" / "pr1512.yaml"])


def test_the_runs_settings_fail_the_size_check(tmp_path, pr1512_config):
    # #1512 seed 42: lzma blob 15,994,836 bytes, under its pruning target (so nothing was pruned), and over the
    # cap with pgolf's code as with its own. size_check reads only the blob's length: a stand-in of that length.
    from pgolf import codepack, pack, sizecheck

    target = recipe_pack()["prune_target_bytes"]
    assert recipe_pack()["compressor"] == "lzma_pruned"
    assert target == int(15.9 * 2**20) - 115_082 and 15_994_836 + HEADER.size <= target
    blob = LZMA_MAGIC + bytes(15_994_836 + HEADER.size - len(LZMA_MAGIC))  # #1512's blob with pgolf's header
    (tmp_path / "model.pgrp").write_bytes(blob)
    (tmp_path / "pack.json").write_text(json.dumps({"sha256": pack.sha256(blob)}))
    (tmp_path / "train_gpt.py").write_bytes(codepack.build_script(pr1512_config, "pr1512"))
    with pytest.raises(PgolfError) as err:
        sizecheck.main(
            [
                "--pgrp",
                str(tmp_path / "model.pgrp"),
                "--pack-json",
                str(tmp_path / "pack.json"),
                "--code",
                str(tmp_path / "train_gpt.py"),
                "--preset",
                "pr1512",
                "--out",
                str(tmp_path / "s.json"),
            ]
        )
    message = str(err.value)
    assert "is over the cap of 16,000,000" in message and "lzma_pruned 15,994,848" in message
    assert "set pack.prune_target_bytes to at most" in message
    assert not (tmp_path / "s.json").exists()


def test_the_fitting_target_leaves_room_for_pgolfs_code(pr1512_config):
    from pgolf import codepack

    fit = 15_880_000  # the target recipes/pr1512.yaml's pack comment names as the one that fits
    assert "prune_target_bytes: 15880000}" in (ROOT / "recipes" / "pr1512.yaml").read_text()
    script = codepack.build_script(pr1512_config, "pr1512")
    assert fit + len(script) <= 16_000_000
