"""Quantize a whole unbanked state (record-stack.md §5.2, §6): storage per tensor, AWQ-lite picks, GPTQ, LQER.

Routing: the quantized matrices (tok_emb and every attention / MLP matrix, the ones the Hessians cover) go
through GPTQ + SDClip with their class's bits; the sparse attention gates (8x12) are int8 per row; every
other float tensor of at most 65,536 elements is kept in fp16. Anything else has no storage rule and is an error.
"""

import re
import time

import torch

from ..errors import PgolfError
from . import awq, dequant, lqer
from .gptq import gptq_quantize, gptq_quantize_protected
from .preset import Preset

MATRIX = re.compile(r"^(tok_emb\.weight|blocks\.\d+\.(attn\.(c_q|c_k|c_v|proj)|mlp\.(fc|proj))\.weight)$")
PASSTHROUGH_MAX_NUMEL = 65_536
GATE_NUMEL = (32, 8_192)


def matrix_class(name: str) -> str:
    if name == "tok_emb.weight":
        return "embed"
    return "attn" if ".attn." in name else "mlp"


def is_gate(name: str, tensor: torch.Tensor) -> bool:
    return "attn_gate" in name and tensor.ndim == 2 and GATE_NUMEL[0] <= tensor.numel() <= GATE_NUMEL[1]


def h_weighted_error(E: torch.Tensor, H: torch.Tensor) -> float:
    """tr(E·H·Eᵀ): the layer-output error the calibration inputs would see (times the batch count)."""
    return float(((E @ H) * E).sum())


def _check_hessians(matrices: dict, hessians: dict, need_rms: bool):
    for name, W in matrices.items():
        H = hessians.get(name)
        if H is None or tuple(H.shape) != (W.shape[1], W.shape[1]):
            found = None if H is None else tuple(H.shape)
            raise PgolfError(
                f"hessians.pt: {name} needs a {W.shape[1]}x{W.shape[1]} Hessian, found {found}; "
                "re-run the hessians stage for this model.pt"
            )
        rms = hessians.get("act_rms", {}).get(name)
        if need_rms and (rms is None or rms.numel() != W.shape[1]):
            raise PgolfError(
                f"hessians.pt: act_rms[{name}] (one RMS per input column) is missing or has the wrong size; "
                "re-run the hessians stage, which records it for AWQ-lite"
            )


def _int8_rows(W: torch.Tensor):
    scale = (W.float().abs().amax(dim=1) / 127).clamp_min(2.0**-24).to(torch.float16)
    q = torch.clamp(torch.round(W.float() / scale.float().unsqueeze(1)), -127, 127).to(torch.int8)
    return q, scale


def _small_tensor(name: str, t: torch.Tensor, tensors: dict, meta: dict):
    if is_gate(name, t):
        tensors[f"{name}.q"], tensors[f"{name}.scale"] = _int8_rows(t)
        meta[name] = dequant.INT8_ROW
    elif not t.is_floating_point():
        tensors[name], meta[name] = t.clone(), dequant.RAW
    elif t.numel() <= PASSTHROUGH_MAX_NUMEL:
        tensors[name], meta[name] = t.to(torch.float16), dequant.FP16
    else:
        raise PgolfError(
            f"model state: {name} {tuple(t.shape)} is neither a quantized matrix nor small enough "
            f"(<= {PASSTHROUGH_MAX_NUMEL} elements) to keep in fp16; the quantizer has no storage rule for it"
        )


def quantize_state(unbanked_state: dict, hessians: dict, preset, *, model_config=None, device="cpu", cache=None):
    """(quantized_state, report): quantized_state = {"tensors", "meta", "config"} (the quantized.pt contract).

    `cache` (a dict the caller keeps) memoizes the per-tensor work across calls on the same model and Hessians:
    the AWQ-lite picks, each tensor's GPTQ codes and errors per (bits, clip, protected groups, GPTQ settings), and
    its LQER factors per (that, rank, group, asym). Cached or not, the result is the same; pgolf.capfit uses it to
    quantize many presets that share most of their settings.
    """
    cache = {} if cache is None else cache
    preset = preset if isinstance(preset, Preset) else Preset.parse(preset)
    start_time = time.perf_counter()
    matrices = {n: t.detach() for n, t in unbanked_state.items() if MATRIX.match(n)}
    _check_hessians(matrices, hessians, need_rms=preset.awq.enabled)
    tensors, meta, rows = {}, {}, {}
    for name, t in unbanked_state.items():  # the cheap tensors first: a tensor without a storage rule fails fast
        if name not in matrices:
            _small_tensor(name, t.detach().cpu(), tensors, meta)
            rows[name] = {"storage": meta[name], "shape": list(t.shape)}

    awq_picks = []
    if preset.awq.enabled:
        eligible = tuple(n for n in matrices if preset.for_class(matrix_class(n)).bits < 8)
        key = ("awq", eligible, preset.awq.top_k, preset.awq.group)
        if key not in cache:
            weights = {n: matrices[n].to(device) for n in eligible}
            cache[key] = awq.select_groups(weights, hessians["act_rms"], preset.awq.top_k, preset.awq.group)
        awq_picks = cache[key]

    gptq_keys = {}
    for name, W in matrices.items():
        spec = preset.for_class(matrix_class(name))
        groups = [(g["start"], g["size"]) for g in awq_picks if g["name"] == name]
        gptq_keys[name] = key = ("gptq", name, spec.bits, spec.clip_sigmas, tuple(groups), *_gptq_args(preset).values())
        if key not in cache:
            W_dev, H_dev = W.to(device, torch.float32), hessians[name].to(device, torch.float32)
            cache[key] = _gptq_tensor(name, W_dev, H_dev, spec, groups, preset)
        parts, how, frob, h_error = cache[key]
        tensors.update(parts)
        meta[name] = how
        rows[name] = {
            "class": matrix_class(name),
            "bits": spec.bits,
            "clip_sigmas": spec.clip_sigmas,
            "shape": list(W.shape),
            "awq_groups": [list(g) for g in groups],
            "lqer": None,
            "frob_error_gptq": frob,
            "h_error_gptq": h_error,
            "frob_error": frob,
            "h_error": h_error,
        }

    lqer_picks = []
    if preset.lqer.enabled:
        spec = preset.lqer
        lqer_picks = sorted(matrices, key=lambda n: -rows[n]["frob_error_gptq"])[: spec.top_k]
        for name in lqer_picks:
            key = ("lqer", gptq_keys[name], spec.rank, spec.group, spec.asym)
            if key not in cache:
                cache[key] = _lqer_tensor(matrices[name], hessians[name], tensors, meta[name], name, spec, device)
            factors, how, frob, h_error = cache[key]
            tensors.update(factors)
            meta[name] = how
            rows[name].update(lqer=how.rsplit("+", 1)[1], frob_error=frob, h_error=h_error)

    for name in matrices:
        rows[name]["storage"] = meta[name]

    report = {
        "tensors": {name: rows[name] for name in unbanked_state},
        "lqer_picks": lqer_picks,
        "awq_picks": awq_picks,
        "h_error_gptq": sum(r["h_error_gptq"] for r in rows.values() if "h_error_gptq" in r),
        "h_error": sum(r["h_error"] for r in rows.values() if "h_error" in r),
        "seconds": time.perf_counter() - start_time,
    }
    quantized = {"tensors": tensors, "meta": {name: meta[name] for name in unbanked_state}}
    return {**quantized, "config": dict(model_config or {})}, report


def _gptq_tensor(name, W, H, spec, groups, preset):
    """({stored tensor name: tensor}, storage, ‖W−Ŵ‖_F, tr(E·H·Eᵀ)) of one matrix by GPTQ (+ AWQ-lite groups)."""
    parts = {}
    how = f"{dequant.GPTQ} (int{spec.bits})"
    if groups:
        q, scale, scale_hi = gptq_quantize_protected(W, H, spec.bits, spec.clip_sigmas, groups, **_gptq_args(preset))
        parts["awqg_start"] = torch.tensor([s for s, _ in groups], dtype=torch.int16)
        parts["awqg_size"] = torch.tensor([n for _, n in groups], dtype=torch.int16)
        parts["awqg_s_hi"] = scale_hi.cpu()
        how += dequant.AWQ
    else:
        q, scale = gptq_quantize(W, H, spec.bits, spec.clip_sigmas, **_gptq_args(preset))
    parts["q"], parts["scale"] = q.cpu(), scale.cpu()
    named = {f"{name}.{suffix}": t for suffix, t in parts.items()}
    E = W - dequant.dequantize_tensor(named, how, name).to(W.device)
    return named, how, float(E.norm()), h_weighted_error(E, H)


def _lqer_tensor(W, H, tensors, how, name, spec, device):
    """({factor name: tensor}, storage, ‖W−Ŵ‖_F, tr(E·H·Eᵀ)) after LQER corrects the GPTQ error of one matrix."""
    W, H = W.to(device, torch.float32), H.to(device, torch.float32)
    E = W - dequant.dequantize_tensor(tensors, how, name).to(device)
    mode, factors = lqer.fit(E, spec.rank, spec.group, spec.asym)
    named = {f"{name}.{suffix}": t.cpu() for suffix, t in factors.items()}
    how = f"{how}+{mode}"
    E = W - dequant.dequantize_tensor({**tensors, **named}, how, name).to(device)
    return named, how, float(E.norm()), h_weighted_error(E, H)


def _gptq_args(preset: Preset) -> dict:
    return {"block_size": preset.gptq.block_size, "damp": preset.gptq.damp}
