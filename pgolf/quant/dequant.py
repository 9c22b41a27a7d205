"""Read the quantized state back into fp32 weights (unbanked names), for evaluation and the packer's tests.

Storage per weight, named by meta[name]:
  "gptq (int<b>)"       <name>.q int8 codes, <name>.scale fp16 per row;  Ŵ = q·scale
    "+awq (int8)"       <name>.awqg_start / .awqg_size int16 column groups, coded at ±127 under <name>.awqg_s_hi
    "+lqer_asym|sym"    LQER factors (see lqer.py), Ŵ += Â·B̂
  "int8 per row"        <name>.q, <name>.scale (symmetric, max|row|/127)
  "passthrough (fp16)"  <name> in fp16
  "passthrough"         <name> unchanged (non-float tensors)
"""

import torch

from ..errors import PgolfError
from . import lqer

GPTQ = "gptq"
AWQ = "+awq (int8)"
INT8_ROW = "int8 per row"
FP16 = "passthrough (fp16)"
RAW = "passthrough"


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Ŵ = q·scale with one scale per row, in fp32."""
    return q.float() * scale.float().to(q.device).unsqueeze(1)


def dequantize_tensor(tensors: dict, how: str, name: str) -> torch.Tensor:
    def part(suffix):
        return tensors[f"{name}.{suffix}"]

    try:
        if how.startswith(GPTQ) or how == INT8_ROW:
            W = dequantize(part("q"), part("scale"))
            if AWQ in how:
                from .awq import SUFFIXES, apply_awq_groups  # shipped only where AWQ-lite is on (codepack.OPTIONAL)

                apply_awq_groups(W, part("q"), *(part(s) for s in SUFFIXES))
            for mode in (lqer.ASYM, lqer.SYM):
                if f"+{mode}" in how:
                    W += lqer.correction(mode, {s: part(s) for s in lqer.SUFFIXES[mode]}).to(W.device)
            return W
        if how == FP16:
            return tensors[name].float()
        if how == RAW:
            return tensors[name]
    except KeyError as missing:
        raise PgolfError(
            f"quantized state: {name} is stored as {how!r} but {missing} is missing; "
            "the file is incomplete, re-run the quantize stage"
        ) from None
    raise PgolfError(f"quantized state: unknown storage {how!r} for {name}; re-run the quantize stage")


def dequantize_state(quantized_state: dict) -> dict:
    """{name: fp32 tensor} with the unbanked names, for GPT.from_unbanked / model.load_unbanked."""
    tensors, meta = quantized_state["tensors"], quantized_state["meta"]
    return {name: dequantize_tensor(tensors, how, name) for name, how in meta.items()}
