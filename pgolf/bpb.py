"""Bits per byte (docs/record-stack.md §1.3): byte counts per target and the diagnostic (non-TTT) evaluation.

val_bpb = (Σ target NLL in nats / ln 2) / Σ target bytes, summed in float64 and all-reduced over ranks.
Every byte count is attached to a stream position: `position_bytes[i]` is what the target token at stream
position i covers, either from the CaseOps sidecar (original pre-transform UTF-8 bytes) or, for data without one,
from SentencePiece lookup tables (pgolf.piece_bytes).
"""

import dataclasses
import math

import numpy as np
import torch

from .errors import PgolfError
from .shards import BOS_ID, load_split, shard_paths

PAD_ID = 0  # fills windows past their end: no BOS, so it adds no document and, by causality, changes nothing


@dataclasses.dataclass
class ValData:
    """The val token stream (from its first BOS) and the byte count of the target at each position."""

    tokens: np.ndarray  # int64 (N,)
    position_bytes: np.ndarray  # int32 (N,); 0 at BOS positions (a BOS covers no text)
    docs: int

    @property
    def targets(self) -> int:
        """Every token after the first is a target, a BOS included: a document's last prediction is the next
        document's BOS (0 bytes, its loss counts), as upstream's `_find_docs` spans end one past the next BOS."""
        return max(int(self.tokens.size) - 1, 0)


def truncated_length(n_tokens: int, seq_len: int) -> int:
    """Upstream's `load_validation_tokens` (#1855, #2123): the stream cut to floor((N-1)/L)*L + 1 tokens, so the
    targets fill whole `seq_len` windows."""
    return (n_tokens - 1) // seq_len * seq_len + 1


def load_val(manifest_path, docs_limit=None, truncate_seq_len=None) -> ValData:
    """The val split cut to whole documents (optionally the first `docs_limit`), then, given `truncate_seq_len`,
    to upstream's window multiple (`eval.truncate_tail`), with per-position byte counts."""
    tokens = load_split(manifest_path, "val").astype(np.int64)
    bos = np.flatnonzero(tokens == BOS_ID)
    if tokens.size == 0 or bos.size == 0 or bos[0] != 0:
        raise PgolfError(
            f"{manifest_path}: the val split must start with a BOS token (id {BOS_ID}) and hold at least one "
            "document; re-run the data stage (tokenize or download)"
        )
    end = tokens.size if docs_limit is None or docs_limit >= bos.size else int(bos[docs_limit])
    if truncate_seq_len is not None:
        end = truncated_length(end, truncate_seq_len)
        if end < 2:
            raise PgolfError(
                f"{manifest_path}: the val split holds fewer than eval.seq_len={truncate_seq_len} targets, so "
                "eval.truncate_tail leaves nothing to score; set eval.truncate_tail to false or use more val documents"
            )
    if shard_paths(manifest_path, "val_bytes"):
        sidecar = load_split(manifest_path, "val_bytes")
        if sidecar.size != tokens.size:
            raise PgolfError(
                f"{manifest_path}: val byte sidecar has {sidecar.size} entries for {tokens.size} val tokens; "
                "re-download or re-tokenize the data set"
            )
        position_bytes = sidecar[:end].astype(np.int32)
    else:
        from .piece_bytes import tokenizer_position_bytes  # shipped only where data.hf.caseops is false (codepack)

        position_bytes = tokenizer_position_bytes(manifest_path, tokens[:end])
    docs = int(np.count_nonzero(bos < end))
    return ValData(tokens=tokens[:end], position_bytes=position_bytes, docs=docs)


class Totals:
    """Running sums of scored NLL (nats), bytes and tokens, as float64 on the scoring device."""

    def __init__(self, device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    def add(self, nll: torch.Tensor, nbytes: torch.Tensor):
        """Add already-masked per-token NLL and byte counts (1-D, same length)."""
        self.sums += torch.stack((nll.double().sum(), nbytes.double().sum(), nll.new_tensor(nll.numel()).double()))

    def reduced(self, dist) -> dict:
        sums = dist.all_reduce_(self.sums.clone())
        loss, nbytes, tokens = (float(x) for x in sums.cpu())
        return {
            "val_loss": loss / max(tokens, 1.0),
            "val_bpb": loss / math.log(2) / max(nbytes, 1.0),
            "scored": int(round(tokens)),
            "bytes": int(round(nbytes)),
        }


def batch_seqs(batch_tokens: int, seq_len: int, world: int) -> int:
    """Windows per rank and forward: VAL_BATCH_TOKENS over all ranks."""
    return max(1, batch_tokens // (seq_len * world))


def windows(n_tokens: int, seq_len: int, stride=None):
    """(context_start, first_target, end_target) per window; the scored target ranges tile [1, n_tokens).

    Non-overlapping (stride None): each window scores all its targets. Sliding: windows end `stride` targets
    apart and score only those, with up to `seq_len` tokens of context (the first window scores all of its).
    """
    spans, first = [], 1
    while first < n_tokens:
        end = min(first + (seq_len if stride is None or first == 1 else stride), n_tokens)
        context = first - 1 if stride is None else max(0, end - 1 - seq_len)
        spans.append((context, first, end))
        first = end
    return spans


@torch.no_grad()
def diagnostic_eval(model, val: ValData, seq_len: int, batch_seqs: int, dist, stride=None):
    """Score every target of the val stream in windows (documents isolated by the model); returns the reduced
    totals. A BOS target is predicted from the end of the document before it, as in upstream's eval_val.

    Each rank takes a contiguous range of windows; windows are padded to `seq_len` so every forward has one
    shape. `model` may be a compiled wrapper; the model itself runs bf16 on CUDA.
    """
    device = dist.device
    tokens = torch.as_tensor(val.tokens, device=device)
    position_bytes = torch.as_tensor(val.position_bytes, device=device)
    spans = windows(tokens.numel(), seq_len, stride)
    lo, hi = len(spans) * dist.rank // dist.world, len(spans) * (dist.rank + 1) // dist.world
    totals = Totals(device)
    offsets = torch.arange(seq_len, device=device)
    for i in range(lo, hi, batch_seqs):
        batch = torch.tensor(spans[i : min(i + batch_seqs, hi)], device=device)
        if batch.shape[0] < batch_seqs:  # keep one shape: the extra rows are empty windows
            pad = batch[-1:].clone()
            pad[:, 1] = pad[:, 2]
            batch = torch.cat([batch, pad.expand(batch_seqs - batch.shape[0], 3)])
        context, first, end = batch.unbind(1)
        positions = context[:, None] + offsets  # stream position of each input token
        target_pos = positions + 1
        valid = target_pos < end[:, None]
        ids = torch.where(valid, tokens[positions.clamp(max=tokens.numel() - 1)], PAD_ID)
        targets = torch.where(valid, tokens[target_pos.clamp(max=tokens.numel() - 1)], PAD_ID)
        scored = valid & (target_pos >= first[:, None])
        nll = model(ids, targets, reduction="none").float()
        totals.add(nll[scored], position_bytes[target_pos[scored]])
    return totals.reduced(dist)
