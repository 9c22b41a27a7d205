"""Quantize a whole unbanked state (docs/record-stack.md §5.2, §6): storage per tensor, AWQ-lite picks, GPTQ, LQER.

Routing: the quantized matrices (tok_emb and every attention / MLP matrix, the ones the Hessians cover) go
through GPTQ + SDClip with their class's bits; the sparse attention gates (8x12) are int8 per row (fp16 with the
preset's gates.int8 off, as #2123); the #1019 base's BigramHash and value-embedding tables are int8 per row as #1512
stores them (rows clipped at their 99.99984th percentile of |w|); every other float tensor of at most 65,536
elements is kept in fp16. Anything else has no storage rule and is an error.
"""

import re
import time

import torch

from ..errors import PgolfError
from . import dequant, lqer
from .gptq import gptq_quantize
from .preset import Preset

MATRIX = re.compile(r"^(tok_emb\.weight|blocks\.\d+\.(attn\.(c_q|c_k|c_v|proj)|mlp\.(fc|proj))\.weight)$")
PASSTHROUGH_MAX_NUMEL = 65_536
GATE_NUMEL = (32, 8_192)
TABLES_1019 = ("bigram.embed.weight", "value_embed.embed.weight")


def matrix_class(name: str) -> str:
    if name == "tok_emb.weight":
        return "embed"
    return "attn" if ".attn." in name else "mlp"


def is_gate(name: str, tensor: torch.Tensor) -> bool:
    return "attn_gate" in name and tensor.ndim == 2 and GATE_NUMEL[0] <= tensor.numel() <= GATE_NUMEL[1]


def h_weighted_error(E: torch.Tensor, H: torch.Tensor) -> float:
    """tr(E·H·Eᵀ): the layer-output error the calibration inputs would see (times the batch count)."""
    return float(((E @ H) * E).sum())


def _check_hessians(matrices: dict, hessians: dict):
    for name, W in matrices.items():
        H = hessians.get(name)
        if H is None or tuple(H.shape) != (W.shape[1], W.shape[1]):
            found = None if H is None else tuple(H.shape)
            raise PgolfError(
                f"hessians.pt: {name} needs a {W.shape[1]}x{W.shape[1]} Hessian, found {found}; "
                "re-run the hessians stage for this model.pt"
            )


def _int8_rows(W: torch.Tensor):
    scale = (W.float().abs().amax(dim=1) / 127).clamp_min(2.0**-24).to(torch.float16)
    q = torch.clamp(torch.round(W.float() / scale.float().unsqueeze(1)), -127, 127).to(torch.int8)
    return q, scale


def _small_tensor(name: str, t: torch.Tensor, tensors: dict, meta: dict, gate_int8: bool):
    if gate_int8 and is_gate(name, t):
        tensors[f"{name}.q"], tensors[f"{name}.scale"] = _int8_rows(t)
        meta[name] = dequant.INT8_ROW
    elif name in TABLES_1019 or name == "tok_emb.weight":  # the latter only with preset.embed_plain_int8
        from .int8_clip import int8_rows_clipped  # shipped only where such a tensor is (codepack.OPTIONAL)

        tensors[f"{name}.q"], tensors[f"{name}.scale"] = int8_rows_clipped(t)
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


def quantize_state(unbanked_state: dict, hessians: dict, preset, *, model_config=None, device="cpu", memo=None):
    """(quantized_state, report): quantized_state = {"tensors", "meta", "config"} as in docs/contracts.md's quantized.pt.

    memo(key, compute) returns compute() or an earlier result for the same key; each key names all that its step
    (AWQ-lite's picks, one matrix's GPTQ, one matrix's LQER factors) depends on besides this model and these
    Hessians, so pgolf.capfit can keep one across presets.
    """
    memo = memo or (lambda key, compute: compute())
    preset = preset if isinstance(preset, Preset) else Preset.parse(preset)
    start_time = time.perf_counter()
    matrices = {n: t.detach() for n, t in unbanked_state.items() if MATRIX.match(n)}
    if preset.embed_plain_int8:
        matrices.pop("tok_emb.weight", None)
    _check_hessians(matrices, hessians)
    if preset.awq.enabled:
        from . import awq  # shipped only where the preset turns AWQ on (pgolf.codepack.OPTIONAL)

        awq.check_act_rms(matrices, hessians)
    tensors, meta, rows = {}, {}, {}
    for name, t in unbanked_state.items():  # the cheap tensors first: a tensor without a storage rule fails fast
        if name not in matrices:
            _small_tensor(name, t.detach().cpu(), tensors, meta, preset.gates.int8)
            rows[name] = {"storage": meta[name], "shape": list(t.shape)}

    awq_picks = []
    if preset.awq.enabled:
        eligible = {n: W.to(device) for n, W in matrices.items() if preset.for_class(matrix_class(n)).bits < 8}
        awq_picks = memo(
            ("awq", *eligible, preset.awq.top_k, preset.awq.group),
            lambda: awq.select_groups(eligible, hessians["act_rms"], preset.awq.top_k, preset.awq.group),
        )

    errors, keys = {}, {}
    for name, W in matrices.items():
        spec = preset.for_class(matrix_class(name))
        W, H = W.to(device, torch.float32), hessians[name].to(device, torch.float32)
        groups = [(g["start"], g["size"]) for g in awq_picks if g["name"] == name]
        how = f"{dequant.GPTQ} (int{spec.bits})"
        keys[name] = key = (name, spec.bits, spec.clip_sigmas, *groups, *_gptq_args(preset).values())
        if groups:  # AWQ-lite's picks, so `awq` is imported
            q, scale = awq.quantize_protected(tensors, name, W, H, spec, groups, memo, key, _gptq_args(preset))
            how += dequant.AWQ
        elif preset.gptq.clip_percentiles:
            from .percentile_clip import gptq_quantize_percentile  # shipped only where the preset sets them

            q, scale = gptq_quantize_percentile(W, H, spec.bits, preset.gptq.clip_percentiles, **_gptq_args(preset))
        else:
            q, scale = memo(key, lambda: gptq_quantize(W, H, spec.bits, spec.clip_sigmas, **_gptq_args(preset)))
        tensors[f"{name}.q"], tensors[f"{name}.scale"], meta[name] = q.cpu(), scale.cpu(), how
        errors[name] = E = W - dequant.dequantize_tensor(tensors, how, name).to(device)
        frob, h_error = float(E.norm()), h_weighted_error(E, H)
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
        if spec.adaptive:
            from .lqer_adaptive import adaptive_ranks  # shipped only where the preset turns it on (codepack.OPTIONAL)

            ranks = adaptive_ranks(errors, spec.ranks, spec.budget_bytes, spec.group)
        else:
            ranks = {n: spec.rank for n in sorted(errors, key=lambda n: -rows[n]["frob_error_gptq"])[: spec.top_k]}
        lqer_picks = list(ranks)
        for name in lqer_picks:
            mode, factors = memo(
                ("lqer", *keys[name], ranks[name], spec.group, spec.asym),
                lambda: lqer.fit(errors[name], ranks[name], spec.group, spec.asym),
            )
            tensors.update({f"{name}.{suffix}": t.cpu() for suffix, t in factors.items()})
            meta[name] += f"+{mode}"
            E = matrices[name].to(device, torch.float32) - dequant.dequantize_tensor(tensors, meta[name], name).to(
                device
            )
            rows[name].update(
                lqer=mode,
                lqer_rank=ranks[name],
                frob_error=float(E.norm()),
                h_error=h_weighted_error(E, hessians[name].to(device)),
            )

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


def _gptq_args(preset: Preset) -> dict:
    return {"block_size": preset.gptq.block_size, "damp": preset.gptq.damp}
