"""Post-training quantization of the record stack: GPTQ + SDClip, AWQ-lite, LQER (docs/record-stack.md §5-§6)."""

from .dequant import dequantize, dequantize_state
from .gptq import gptq_quantize
from .preset import Preset
from .state import quantize_state

__all__ = ["Preset", "dequantize", "dequantize_state", "gptq_quantize", "quantize_state"]
