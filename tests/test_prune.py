"""#1512's pruning + lzma (pgolf.prune): the round trip, the pruning order against a sort of Python tuples, and
the size search against a scan of every count.

    pytest tests/test_prune.py
"""

import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.prune import apply_pruning, lzma_pack, lzma_unpack, prune_order, prune_to_target


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
    with pytest.raises(PgolfError, match="toy: not an lzma-packed"):
        lzma_unpack(b"not lzma", "toy")


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
        return 1000 * sum(int(torch.count_nonzero(s["tensors"][f"{n}.q"]))
                          for n in ("blocks.0.mlp.fc.weight", "blocks.0.attn.c_q.weight"))

    for keep in (0, 1, 17, total - 1):
        count, pruned = prune_to_target(state, 1000 * keep, size)
        assert count == total - keep and size(pruned) == 1000 * keep
    with pytest.raises(PgolfError, match="prune_target_bytes"):
        prune_to_target(state, 10, lambda s: 11)
