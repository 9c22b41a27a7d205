"""pack.json's brotli-only baseline: what the straightforward alternative to the PGRP container would weigh. Only the
DAG's pack rule asks for it (minutes of one core); pgolf.runall passes baseline=False, so train_gpt.py leaves this
module out (pgolf.codepack.OUTSIDE_SCRIPT).
"""

import io

import torch

from .pack import brotli_compress


def brotli_baseline_bytes(state: dict) -> int:
    """Size of torch.save of the whole quantized state, brotli quality 11, lgwin 24."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return len(brotli_compress(buf.getvalue()))
