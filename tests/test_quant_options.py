"""The quantizer's per-run options: #1935's adaptive LQER ranks (against a slow reference and the run's own byte
counts) and #2123's fp16 attention gates.

    pytest tests/test_quant_options.py
"""

import dataclasses

import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.hessians import HessianSums
from pgolf.model import GPT, ModelConfig
from pgolf.quant import Preset, dequant, dequantize_state, lqer, lqer_adaptive, quantize_state

TINY = {
    "vocab_size": 128,
    "num_layers": 3,
    "model_dim": 64,
    "num_heads": 8,
    "num_kv_heads": 4,
    "mlp_mult": 2.0,
    "rope_dims": 8,
    "xsa_last_n": 3,
    "num_loops": 1,
    "loop_start": 1,
    "loop_end": 1,
    "parallel_start_layer": 2,
    "train_seq_len": 32,
}


def test_byte_cost_matches_the_rank_lines_of_1935s_log():
    # "LQER adaptive" lines of #1935's log (group 64): (rows, cols, rank) -> bytes
    logged = {
        (2048, 512, 6): 4706,
        (2048, 512, 4): 3138,
        (256, 512, 6): 2018,
        (256, 512, 4): 1346,
        (512, 512, 6): 2402,
        (8192, 512, 6): 13922,
    }
    for (rows, cols, rank), nbytes in logged.items():
        assert lqer_adaptive.asym_bytes(rows, cols, rank, 64) == nbytes


def slow_adaptive(errors: dict, ranks: list[int], budget: int, group: int) -> dict:
    """The allocator's definition, step by step: energies from rank-r reconstructions in float64, then repeatedly
    the best unvisited option (first listed on ties), taken or upgraded if its cost fits."""
    options = []
    for name, E in errors.items():
        U, S, Vh = torch.linalg.svd(E.double(), full_matrices=False)
        prev_energy, prev_cost = 0.0, 0
        for r in sorted(ranks):
            approx = (U[:, :r] * S[:r]) @ Vh[:r]
            energy = float((approx**2).sum())
            cost = lqer_adaptive.asym_bytes(E.shape[0], E.shape[1], r, group)
            options.append(((energy - prev_energy) / max(cost - prev_cost, 1), name, r, cost))
            prev_energy, prev_cost = energy, cost
    chosen, left, todo = {}, budget, list(options)
    while todo:
        best = max(range(len(todo)), key=lambda i: (todo[i][0], -i))
        _, name, r, cost = todo.pop(best)
        if name not in chosen:
            if cost <= left:
                chosen[name], left = (r, cost), left - cost
        elif r > chosen[name][0] and cost - chosen[name][1] <= left:
            left -= cost - chosen[name][1]
            chosen[name] = (r, cost)
    return {name: r for name, (r, _) in chosen.items()}


@pytest.mark.parametrize("budget", [0, 300, 1000, 1500, 2000, 2500, 10**7])
def test_adaptive_ranks_match_the_slow_reference(budget):
    gen = torch.Generator().manual_seed(3)
    shapes = [(128, 64), (64, 64), (32, 64), (256, 64), (64, 128)]
    # errors of different scales and spectra, so tensors differ in what a rank buys
    errors = {
        f"t{i}": torch.randn(shape, generator=gen) @ torch.diag(torch.rand(shape[1], generator=gen) ** (i + 1))
        for i, shape in enumerate(shapes)
    }
    fast = lqer_adaptive.adaptive_ranks(errors, [6, 4, 8], budget, 32)
    assert fast == slow_adaptive(errors, [4, 6, 8], budget, 32)
    spent = sum(lqer_adaptive.asym_bytes(*errors[n].shape, r, 32) for n, r in fast.items())
    assert spent <= budget
    if budget == 0:
        assert fast == {}
    if budget == 10**7:
        assert fast == {name: 8 for name in errors}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = GPT(ModelConfig(**TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    model.looping = True
    sums = HessianSums()
    ids = torch.randint(2, 128, (4, 32))
    ids[:, 0] = 1
    with torch.no_grad():
        model(ids, capture=sums)
    return model, sums.result(total_batches=1)


def test_adaptive_preset_stores_the_allocated_ranks(tiny):
    model, hessians = tiny
    state = model.unbanked_state_dict()
    preset = Preset.parse({"lqer": {"adaptive": True, "budget_bytes": 3000, "ranks": [2, 4], "group": 32}})
    quantized, report = quantize_state(state, hessians, preset, model_config=dataclasses.asdict(model.config))
    record, _ = quantize_state(state, hessians, Preset.parse({"lqer": {"group": 32}}))
    # the allocator sees the GPTQ errors of every quantized matrix, in state order
    base = dequantize_state(record | {"meta": {n: m.split("+lqer")[0] for n, m in record["meta"].items()}})
    errors = {n: state[n].float() - base[n] for n, row in report["tensors"].items() if "bits" in row}
    expected = lqer_adaptive.adaptive_ranks(errors, [2, 4], 3000, 32)
    assert expected and report["lqer_picks"] == list(expected)
    for name, rank in expected.items():
        assert report["tensors"][name]["lqer_rank"] == rank
        suffix = "lqA_a" if quantized["meta"][name].endswith(lqer.ASYM) else "lqA"
        assert quantized["tensors"][f"{name}.{suffix}"].shape[1] == rank
    assert len(expected) != 3 or set(expected.values()) != {4}  # not the top-k rule in disguise


def test_gates_stay_fp16_when_the_preset_says_so(tiny):
    model, hessians = tiny
    state = model.unbanked_state_dict()
    gates = [n for n in state if n.endswith("attn_gate_w")]
    assert gates
    fp16, _ = quantize_state(state, hessians, Preset.parse({"gates": {"int8": False}}))
    int8, _ = quantize_state(state, hessians, Preset())
    restored = dequantize_state(fp16)
    for name in gates:
        assert fp16["meta"][name] == dequant.FP16 and int8["meta"][name] == dequant.INT8_ROW
        assert torch.equal(restored[name], state[name].to(torch.float16).float())


def test_adaptive_preset_rejects_an_empty_rank_list():
    with pytest.raises(PgolfError, match="lqer.adaptive"):
        Preset.parse({"lqer": {"adaptive": True, "ranks": []}})
