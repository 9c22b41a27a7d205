"""Full-weight SGD score-first test-time training (#1493's legal TTT as #1572 ran it): `eval.ttt.mode: sgd`.

The val stream's targets are cut into chunks of `eval.ttt.global_chunk_tokens`. Sliding windows of `eval.seq_len`
tokens, `eval.sliding_stride` apart, each score the targets no earlier window scored (the first scores all of its
own); a window belongs to the chunk that holds its first scored target. Chunk by chunk, every rank scores its
contiguous share of the chunk's windows (no gradients; those losses enter the totals), then, unless it is the last
chunk, every weight of the model trains on the chunk: `global_epochs` passes over its whole `eval.ttt.seq_len`
sequences, `global_batch_seqs` per step and rank, SGD with momentum `global_momentum`, the learning rate
`global_lr` on a cosine over the chunks, gradients averaged over ranks and clipped to `global_grad_clip`. Every
target is scored (a BOS that ends a document too, with 0 bytes), as #1572 scores the stream.

The score-first probe re-scores a few chunks after their update with the weights as they were before it: the
recorded losses must come back exactly.
"""

import dataclasses
import math
import time

import numpy as np
import torch
import torch.distributed as torch_dist

from .bpb import PAD_ID, Totals, ValData
from .dist import sync
from .errors import PgolfError

PROBE_TOLERANCE = 1e-4  # nats per token: the same forward on the same weights


def sliding_windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(context_start, first_target, end_target) of #1572's windows over a stream of `n_tokens` (targets 1..n-1):
    a window starts every `stride` tokens while it has a target to score; the first scores targets 1..seq_len,
    each later one the last `stride` positions of its `seq_len` (fewer at the stream's end)."""
    total, context = n_tokens - 1, seq_len - stride
    spans = []
    for start in range(0, total, stride):
        if start + context >= total:
            break
        first = 1 if start == 0 else start + context + 1
        spans.append((start, first, min(start + seq_len, total) + 1))
    return spans


def chunk_of_windows(spans, chunk_tokens: int, n_chunks: int) -> list[list[int]]:
    """Window indices per chunk: the chunk that holds the window's first scored target."""
    chunks = [[] for _ in range(n_chunks)]
    for k, (_, first, _) in enumerate(spans):
        chunks[min((first - 1) // chunk_tokens, n_chunks - 1)].append(k)
    return chunks


def cosine_lr(base: float, chunk: int, n_chunks: int) -> float:
    return base * 0.5 * (1 + math.cos(math.pi * chunk / max(n_chunks - 1, 1)))


@dataclasses.dataclass
class SGDResult:
    totals: dict
    coverage: torch.Tensor  # (N,) int32: how often each stream position was scored, all ranks
    probe: dict
    seconds: dict
    chunks: int
    steps: int


class SGDTTT:
    def __init__(
        self,
        model,
        val: ValData,
        ttt_cfg,
        seq_len: int,
        stride: int | None,
        truncate_tail: bool,
        dist,
        compile: bool = False,
        batch_seqs: int | None = None,
    ):
        """`ttt_cfg`: eval.ttt (its global_* keys and seq_len); `seq_len`, `stride`: the scoring windows
        (eval.seq_len, eval.sliding_stride; no stride = non-overlapping windows); `batch_seqs`: windows per scoring
        batch (default global_batch_seqs, as #1572)."""
        self.model, self.cfg, self.dist = model, ttt_cfg, dist
        self.seq_len, self.stride = seq_len, stride or seq_len
        if not 0 < self.stride <= seq_len:
            raise PgolfError(f"config eval.sliding_stride {stride}: must be in 1..eval.seq_len ({seq_len})")
        n = val.tokens.size
        if truncate_tail:  # #1572 keeps (N - 1) // seq_len * seq_len targets
            n = (n - 1) // seq_len * seq_len + 1
        if n < 2:
            raise PgolfError(f"val stream of {val.tokens.size} tokens is too short for eval.seq_len {seq_len}")
        device = dist.device
        self.tokens = torch.as_tensor(val.tokens[:n], device=device)
        self.position_bytes = torch.as_tensor(val.position_bytes[:n], device=device)
        self.spans = sliding_windows(n, seq_len, self.stride)
        self.n_chunks = -(-(n - 1) // ttt_cfg.global_chunk_tokens)
        self.chunk_windows = chunk_of_windows(self.spans, ttt_cfg.global_chunk_tokens, self.n_chunks)
        self.batch_seqs = batch_seqs or ttt_cfg.global_batch_seqs
        self.compiled = compile and device.type == "cuda"
        self.forward = torch.compile(model, dynamic=False) if self.compiled else model
        probes = min(ttt_cfg.probe_batches, self.n_chunks - 1)
        self.probe_chunks = (
            set(np.linspace(0, self.n_chunks - 2, probes).round().astype(int).tolist()) if probes else set()
        )

    # ----- scoring -----
    def _window_batch(self, spans):
        """(ids, targets, scored mask, target positions) of a batch of windows padded to seq_len and batch_seqs."""
        device, L = self.dist.device, self.seq_len
        batch = torch.tensor(spans, device=device).view(-1, 3)
        if batch.shape[0] < self.batch_seqs:  # one shape for the compiled forward: extra rows score nothing
            pad = batch[-1:].clone()
            pad[:, 1] = pad[:, 2]
            batch = torch.cat([batch, pad.expand(self.batch_seqs - batch.shape[0], 3)])
        context, first, end = batch.unbind(1)
        positions = context[:, None] + torch.arange(L, device=device)
        target_pos = positions + 1
        valid = target_pos < end[:, None]
        last = self.tokens.numel() - 1
        ids = torch.where(valid, self.tokens[positions.clamp(max=last)], PAD_ID)
        targets = torch.where(valid, self.tokens[target_pos.clamp(max=last)], PAD_ID)
        return ids, targets, valid & (target_pos >= first[:, None]), target_pos

    @torch.no_grad()
    def _score_chunk(self, windows, totals=None, coverage=None) -> list[torch.Tensor]:
        """Per-batch NLL of this rank's share of the chunk's windows; adds to the totals when given."""
        self.model.eval()
        lo = len(windows) * self.dist.rank // self.dist.world
        hi = len(windows) * (self.dist.rank + 1) // self.dist.world
        mine, out = windows[lo:hi], []
        for b in range(0, len(mine), self.batch_seqs):
            ids, targets, scored, target_pos = self._window_batch(
                [self.spans[k] for k in mine[b : b + self.batch_seqs]]
            )
            nll = self.forward(ids, targets, reduction="none").float()
            out.append(nll[scored])
            if totals is not None:
                totals.add(nll[scored], self.position_bytes[target_pos[scored]])
                coverage.index_add_(0, target_pos[scored], torch.ones_like(target_pos[scored], dtype=torch.int32))
        return out

    # ----- training -----
    def _train_chunk(self, chunk: int, params, opt) -> int:
        cfg, dist, L = self.cfg, self.dist, self.cfg.seq_len
        total = self.tokens.numel() - 1
        start = chunk * cfg.global_chunk_tokens
        seqs = (min(start + cfg.global_chunk_tokens, total) - start) // L
        if seqs == 0 or cfg.global_epochs == 0:
            return 0
        for group in opt.param_groups:
            group["lr"] = cosine_lr(cfg.global_lr, chunk, self.n_chunks)
        lo, hi = seqs * dist.rank // dist.world, seqs * (dist.rank + 1) // dist.world
        widest = max(seqs * (r + 1) // dist.world - seqs * r // dist.world for r in range(dist.world))
        batches = -(-widest // cfg.global_batch_seqs)  # every rank steps together (a short rank adds zeros)
        self.model.train()
        steps = 0
        for _ in range(cfg.global_epochs):
            for b in range(batches):
                s0, s1 = lo + b * cfg.global_batch_seqs, min(lo + (b + 1) * cfg.global_batch_seqs, hi)
                opt.zero_grad(set_to_none=False)
                if s1 > s0:
                    local = self.tokens[start + s0 * L : start + s1 * L + 1]
                    loss = self.model(local[:-1].view(-1, L), local[1:].view(-1, L))
                    loss.backward()
                self._average_grads(params)
                torch.nn.utils.clip_grad_norm_(params, cfg.global_grad_clip)
                opt.step()
                steps += 1
        return steps

    def _average_grads(self, params):
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if not self.dist.enabled:
            return
        flat = torch.cat([p.grad.flatten() for p in params])
        self.dist.all_reduce_(flat)
        flat /= self.dist.world
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    # ----- the whole evaluation -----
    def warmup(self):
        """Compile the scoring forward on random tokens (outside the timer); no weight changes."""
        vocab = self.model.config.vocab_size
        ids = torch.randint(2, vocab, (self.batch_seqs, self.seq_len), device=self.dist.device)
        for p in self.model.parameters():  # the state `run` scores in (the compiled graph guards on it)
            p.requires_grad_(True)
        with torch.no_grad():
            self.model.eval()
            self.forward(ids, ids, reduction="none")
        sync(self.dist.device)

    def run(self) -> SGDResult:
        device, dist = self.dist.device, self.dist
        params = list(self.model.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=self.cfg.global_lr, momentum=self.cfg.global_momentum)
        totals = Totals(device)
        coverage = torch.zeros(self.tokens.numel(), dtype=torch.int32, device=device)
        diffs, steps, train_seconds = [], 0, 0.0
        start = time.perf_counter()
        for chunk, windows in enumerate(self.chunk_windows):
            recorded = self._score_chunk(windows, totals, coverage)
            if chunk == self.n_chunks - 1:
                break  # the last chunk is scored, never trained on
            t0 = time.perf_counter()
            before = [p.detach().clone() for p in params] if chunk in self.probe_chunks else None
            steps += self._train_chunk(chunk, params, opt)
            if before is not None:
                diffs.append(self._probe(windows, recorded, before, params))
            train_seconds += time.perf_counter() - t0
        sync(device)
        seconds = {"ttt": time.perf_counter() - start, "sgd_train": train_seconds}
        for p in params:
            p.requires_grad_(False)
        self.model.eval()
        return SGDResult(
            totals=totals.reduced(dist),
            coverage=dist.all_reduce_(coverage),
            probe=self._probe_summary(diffs),
            seconds=seconds,
            chunks=self.n_chunks,
            steps=steps,
        )

    # ----- score-first probe -----
    def _probe(self, windows, recorded, before, params):
        """Re-score the chunk with the weights as they were before its update (and, for contrast, after)."""
        after = [p.detach().clone() for p in params]

        def load(values):
            with torch.no_grad():
                for p, v in zip(params, values):
                    p.copy_(v)

        def worst(rescored):
            return max((float((r - c).abs().max()) for r, c in zip(rescored, recorded) if c.numel()), default=0.0)

        diff_after = worst(self._score_chunk(windows))
        load(before)
        diff_before = worst(self._score_chunk(windows))
        load(after)
        return diff_before, diff_after

    def _probe_summary(self, diffs) -> dict:
        device = self.dist.device
        worst = torch.tensor(diffs or [(0.0, 0.0)], dtype=torch.float64, device=device).max(0).values
        worst = self.dist.all_reduce_(worst, op=torch_dist.ReduceOp.MAX)
        return {
            "chunks": len(diffs),
            "tolerance": PROBE_TOLERANCE,
            "max_abs_diff_before_update": float(worst[0]),
            "max_abs_diff_after_update": float(worst[1]),
            "passed": bool(diffs) and float(worst[0]) <= PROBE_TOLERANCE,
        }

    def eval_outputs(self, result, seconds, timer, graphs, log) -> dict:
        """eval.json's TTT entries for the full-weight SGD mode (every target of the stream scored, BOS ones too)."""
        from .evaluate import compiled_graphs, projected_8gpu  # the caller's module, imported already

        sync(self.dist.device)
        seconds["eval_timer"] = time.perf_counter() - timer
        seconds.update(result.seconds)
        scored = check_coverage(result.coverage)
        out = {
            "ttt": {k: result.totals[k] for k in ("val_loss", "val_bpb")},
            "final_bpb": result.totals["val_bpb"],
            "targets": scored,
            "bytes": result.totals["bytes"],
            "scored": scored,
            "seconds": seconds,
            "projected_8gpu_seconds": projected_8gpu(seconds["eval_timer"], scored, self.dist),
            "graphs_compiled_in_timer": compiled_graphs() - graphs,
            "ttt_chunks": result.chunks,
            "ttt_steps": result.steps,
            "probes": {"tilt_causal": "off", "score_first": result.probe},
        }
        log.write({"event": "ttt", **{k: out[k] for k in ("ttt", "final_bpb", "scored", "seconds")}})
        return out


def check_coverage(coverage: torch.Tensor) -> int:
    """Every target (positions 1..N-1) scored exactly once: returns the count or fails."""
    coverage = coverage.cpu().numpy()
    wrong = int(np.count_nonzero(coverage[1:] != 1)) + int(coverage[0] != 0)
    if wrong:
        raise PgolfError(
            f"SGD TTT scored {wrong} positions not exactly once; this is a bug in pgolf.sgd_ttt, report it"
        )
    return int(coverage.sum())
