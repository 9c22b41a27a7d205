"""Phased score-first LoRA test-time training (docs/record-stack.md §8.2), the scored evaluation.

Documents (spans from each BOS through the next document's BOS, whose prediction is scored too) are sorted by
length and cut into batches, handed out longest first through a counter in the torch.distributed store. For each
batch every document's targets are cut into chunks of one size, the short-document rule of the batch's longest
document (`short_doc_chunks`, else `chunk_size`); at
step c each document's chunk c is predicted from up to `seq_len` tokens of its own prefix through the model
plus that document's LoRA adapters, scored (its per-token losses enter the totals) and only then, unless it
is the document's last chunk, the adapters take one AdamW step on that chunk's mean loss. Between batches B is
zeroed and A kept. When the count of scored documents crosses a phase boundary, all ranks pause and run one
epoch of distributed SGD on all base weights over the first `boundary` scored documents (ascending length), then
continue with fresh adapters. With the n-gram tilt on, the scored loss is tilted on gated positions (q from the
same forward); the adapters always train on the untilted loss.
"""

import dataclasses
import itertools
import math
import time

import numpy as np
import torch
import torch.distributed as torch_dist

from .attention import segment_offsets
from .bpb import PAD_ID, Totals, ValData
from .dist import sync
from .lora import KINDS, BatchedLoRA, adapter_shapes
from .shards import BOS_ID

LORA_SEED = 0  # every rank draws the same initial A
PROBE_TOLERANCE = 1e-4  # nats per token: re-scoring in the same forward mode is exact up to kernel noise


@dataclasses.dataclass
class TTTConfig:
    """`eval.ttt`: record values (#1855, Appendix A) as defaults."""

    enabled: bool = True
    mode: str = "lora"  # lora: phased LoRA (this module); sgd: full-weight SGD per chunk (pgolf.sgd_ttt, #1572)
    seq_len: int = 2048  # TTT_EVAL_SEQ_LEN: context window ending at each chunk's end
    chunk_size: int = 48
    short_doc_chunks: list = dataclasses.field(default_factory=list)  # [[max_doc_tokens, chunk], ...] (#2140)
    batch_size: int = 64
    lora_rank: int = 80
    lora_alpha: float = 144.0
    targets: dict = dataclasses.field(default_factory=lambda: {kind: True for kind in KINDS})
    warm_start_a: bool = True
    lr: float = 1e-4
    local_lr_mult: float = 1.0
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-10
    weight_decay: float = 0.5
    phases: int = 3
    prefix_docs: int = 2500
    global_lr: float = 0.001
    global_momentum: float = 0.9
    global_epochs: int = 1
    global_chunk_tokens: int = 32768
    global_batch_seqs: int = 32
    global_grad_clip: float = 1.0
    window_multiple: int = 128  # TTT windows padded to a multiple of this (fewer compiled shapes)
    probe_batches: int = 2  # batches per rank whose middle chunk is re-scored by the score-first probe


def window_cuts(ids: torch.Tensor) -> torch.Tensor:
    """cu_seqlens of TTT windows: a window holds one document (its BOS at column 0 or cut off before it, PAD
    after its end), so the cuts are the row starts. Made from the shape alone: no `nonzero`, and so no
    data-dependent size in the compiled graphs."""
    B, T = ids.shape
    return torch.arange(0, B * T + 1, T, dtype=torch.int32, device=ids.device)


def score_terms(logits, targets, hint):
    """(nll, log q) from one fp32 log-softmax: the target's loss and the hint's log-probability.

    logits (..., V); targets and hint (...) int64, hint -1 where there is none (its log q is then unused).
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    logq_hint = log_probs.gather(-1, hint.long().clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return nll, logq_hint


def chunk_terms(model, lora, ids, in_idx, targets, hint):
    """(nll, log q of the hint) at the chunk positions `in_idx` (B, width) of windows `ids` (B, T): the final
    hidden states are gathered before the head, so the vocabulary projection runs on the chunk, not the window."""
    h = model.hidden(ids, adapters=lora, cu_seqlens=window_cuts(ids))
    h = h.gather(1, in_idx[..., None].expand(-1, -1, h.size(-1)))
    return score_terms(model.logits(h, adapters=lora), targets, hint)


def split_documents(tokens: np.ndarray):
    """(starts, lengths) of upstream's document spans (`_find_docs`): from each BOS through the next document's
    BOS inclusive, so a document's last target is that BOS; the last document runs to the stream's end. Spans
    with no target (a BOS alone at the end) are dropped."""
    starts = np.flatnonzero(tokens == BOS_ID)
    ends = np.append(starts[1:] + 1, tokens.size)
    lengths = ends - starts
    keep = lengths >= 2
    return starts[keep], lengths[keep]


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Documents sorted by span length (stable), cut into batches: upstream's ascending batch list, whose index
    orders the documents of a global phase."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]


def queue_order(lengths: np.ndarray, batches: list[np.ndarray]) -> list[int]:
    """Indices into `batches` in the order they are handed out: longest longest-document first, ties in ascending
    index order (upstream's stable sort on the negated maximum)."""
    return sorted(range(len(batches)), key=lambda i: -int(lengths[batches[i]].max()))


def phase_documents(batches: list[np.ndarray], queue: list[int], claimed: int, boundary: int) -> np.ndarray:
    """The documents a global phase trains on: those of the first `claimed` queue entries (all scored by then),
    ordered by their batch's index in the ascending list, then position in the batch; the first `boundary`."""
    done = sorted(queue[: min(claimed, len(queue))])
    return np.concatenate([batches[i] for i in done])[:boundary] if done else np.zeros(0, dtype=np.int64)


def chunk_sizes(lengths: np.ndarray, cfg: TTTConfig) -> np.ndarray:
    """Per document: the first short-document rule whose length bound covers it, else `chunk_size`."""
    sizes = np.full(lengths.size, cfg.chunk_size, dtype=np.int64)
    for max_tokens, chunk in sorted(cfg.short_doc_chunks, reverse=True):
        sizes[lengths <= max_tokens] = chunk
    return sizes


def batch_chunk(lengths: np.ndarray, cfg: TTTConfig) -> int:
    """A batch's one chunk size: the rule of its longest document (#2140 picks it from the batch's max length)."""
    return int(chunk_sizes(lengths.max(keepdims=True), cfg)[0])


def phase_boundaries(cfg: TTTConfig, n_docs: int) -> list[int]:
    """Scored-document counts at which the global phases run; a phase that could help no document is dropped."""
    bounds = [cfg.prefix_docs * (k + 1) // cfg.phases for k in range(cfg.phases)] if cfg.phases else []
    return [b for b in bounds if 0 < b < n_docs]


class SharedCounters:
    """Integer counters shared by all ranks: the torch.distributed store under torchrun, a dict alone."""

    _runs = itertools.count()

    def __init__(self, dist):
        prefix = f"pgolf_ttt_{next(self._runs)}/"  # every rank runs the same sequence of TTT evaluations
        self.store = None
        self.values = {}
        if dist.enabled:
            self.store = torch_dist.PrefixStore(prefix, torch_dist.distributed_c10d._get_default_store())

    def add(self, key: str, amount: int = 1) -> int:
        if self.store is not None:
            return int(self.store.add(key, amount))
        self.values[key] = self.values.get(key, 0) + amount
        return self.values[key]


@dataclasses.dataclass
class TTTResult:
    totals: dict  # scored (tilted when the tilt is on)
    untilted: dict
    gated: int
    coverage: torch.Tensor  # (N,) int32: how often each stream position was scored, all ranks
    position_nll: torch.Tensor  # (N,) float32: this rank's recorded score per position (0 where not scored here)
    probe: dict
    seconds: dict
    phases: list


class PhasedTTT:
    def __init__(self, model, val: ValData, cfg: TTTConfig, dist, compile: bool = False):
        """`compile`: torch.compile the chunk step on CUDA (call `warmup` before `run`); the global phases run
        eagerly (a few seconds per phase, not worth compiling a second full-model backward)."""
        self.model, self.cfg, self.dist = model, cfg, dist
        device = dist.device
        self.compiled = compile and device.type == "cuda"
        self.terms = torch.compile(chunk_terms) if self.compiled else chunk_terms
        self.host_tokens = val.tokens  # the global phases build their batches on the host
        self.tokens = torch.as_tensor(val.tokens, device=device)
        self.position_bytes = torch.as_tensor(val.position_bytes, device=device)
        self.starts, self.lengths = split_documents(val.tokens)
        self.batches = length_batches(self.lengths, cfg.batch_size)
        self.queue = queue_order(self.lengths, self.batches)  # queue position -> index into self.batches
        self.boundaries = phase_boundaries(cfg, self.starts.size)
        shapes = adapter_shapes(model, cfg.targets)
        self.lora = BatchedLoRA(shapes, cfg.batch_size, cfg.lora_rank, cfg.lora_alpha, device)
        self.lora.reinitialize(torch.Generator().manual_seed(LORA_SEED))

    # ----- one chunk step -----
    def chunk_nll(self, ids, in_idx, targets, hint):
        """Per-token NLL (B, width) at the chunk positions and log q of each position's hint, one log-softmax."""
        for t in (ids, in_idx, targets, hint):  # one compiled graph for every window length and chunk width
            torch._dynamo.maybe_mark_dynamic(t, 1)
        return self.terms(self.model, self.lora, ids, in_idx, targets, hint)

    def warmup(self):
        """Compile the chunk step for every window length and chunk width the eval can run, on random tokens (no
        val data), leaving every weight unchanged."""
        cfg, device, vocab = self.cfg, self.dist.device, self.model.config.vocab_size
        self._freeze_base()  # the state the chunk steps run in (the compiled graph guards on it)
        widths = {cfg.chunk_size, *(chunk for _, chunk in cfg.short_doc_chunks)}
        for length in range(cfg.window_multiple, cfg.seq_len + cfg.window_multiple, cfg.window_multiple):
            ids = torch.randint(2, vocab, (cfg.batch_size, min(length, cfg.seq_len)), device=device)
            ids[:, 0] = BOS_ID
            for width in sorted(widths):
                index = torch.randint(0, ids.size(1), (cfg.batch_size, width), device=device)
                targets = torch.randint(2, vocab, index.shape, device=device)
                hint = torch.randint(2, vocab, index.shape, device=device)  # not `targets`: aliasing recompiles
                self.chunk_nll(ids, index, targets, hint)[0].sum().backward()
        for p in self.lora.parameters():
            p.grad = None
        sync(device)

    def _freeze_base(self):
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def _layout(self, starts, j0, j1, width):
        """Device tensors of one step: input ids, chunk positions in the window, targets and their stream positions.
        `width` = the batch's chunk size, fixed over its steps (positions past a chunk's end are not valid)."""
        cfg, device = self.cfg, self.dist.device
        ctx = np.maximum(0, j1 - 1 - cfg.seq_len)
        win = j1 - 1 - ctx
        length = min(cfg.seq_len, -(-max(int(win.max()), 1) // cfg.window_multiple) * cfg.window_multiple)
        vec = torch.from_numpy(np.stack([starts + ctx, win, j0 - 1 - ctx, starts + j0, j1 - j0])).to(device)
        base, win_t, first_idx, first_pos, count = vec
        last = self.tokens.numel() - 1
        cols = torch.arange(length, device=device)
        ids = torch.where(cols < win_t[:, None], self.tokens[(base[:, None] + cols).clamp(max=last)], PAD_ID)
        c = torch.arange(width, device=device)
        valid = c < count[:, None]
        in_idx = (first_idx[:, None] + c).clamp(0, length - 1)
        positions = (first_pos[:, None] + c).clamp(max=last)
        hint = self.hint[positions] if self.hint is not None else torch.zeros_like(positions)
        return (ids, in_idx, self.tokens[positions], hint), positions, valid

    def _score(self, nll, log_q, inputs, positions, valid):
        with torch.no_grad():
            nll, targets, hint = nll.detach(), inputs[2], inputs[3]
            scored = nll
            if self.hint is not None:
                from . import ngram  # the tilt's module ships only where the config turns it on (codepack.OPTIONAL)

                gated = self.gated[positions] & valid
                scored = ngram.tilt(nll, log_q.detach(), targets == hint, gated, self.boost)
                self.gated_count += gated.sum()
            nbytes = self.position_bytes[positions[valid]]
            self.totals.add(scored[valid], nbytes)
            self.untilted.add(nll[valid], nbytes)
            self.coverage.index_add_(0, positions[valid], torch.ones_like(positions[valid], dtype=torch.int32))
            self.position_nll[positions[valid]] = scored[valid]

    def _batch(self, index: int, docs: np.ndarray):
        cfg, rows = self.cfg, self.cfg.batch_size
        starts = np.zeros(rows, dtype=np.int64)
        n_targets = np.zeros(rows, dtype=np.int64)
        starts[: docs.size], n_targets[: docs.size] = self.starts[docs], self.lengths[docs] - 1
        chunk = np.full(rows, batch_chunk(self.lengths[docs], cfg), dtype=np.int64)
        n_chunks = -(-n_targets // chunk)
        if cfg.warm_start_a:
            self.lora.reset_b()
        else:  # a fresh A drawn per batch index, so no result depends on which rank took which batch
            self.lora.reinitialize(torch.Generator().manual_seed(LORA_SEED + 1 + index))
        params = list(self.lora.parameters())
        opt = torch.optim.AdamW(
            params,
            lr=cfg.lr * cfg.local_lr_mult,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        )
        steps = int(n_chunks.max())
        probe_step = steps // 2 - 1 if self.probes_left > 0 and steps >= 2 else -1
        for c in range(steps):
            active = c < n_chunks
            j0 = np.where(active, 1 + c * chunk, 1)
            j1 = np.where(active, 1 + np.minimum((c + 1) * chunk, n_targets), 1)
            inputs, positions, valid = self._layout(starts, j0, j1, int(chunk.max()))
            nll, log_q = self.chunk_nll(*inputs)
            self._score(nll, log_q, inputs, positions, valid)
            train = active & (c < n_chunks - 1)  # a document's last chunk is scored, never trained on
            if not train.any():
                continue
            mask = valid & torch.from_numpy(train).to(valid.device)[:, None]
            loss = ((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).sum()
            loss.backward()
            before = [p.detach().clone() for p in params] if c == probe_step else None
            opt.step()
            opt.zero_grad(set_to_none=True)
            if before is not None:
                self._probe(before, inputs, nll.detach(), valid)

    # ----- score-first probe -----
    def _probe(self, before, inputs, recorded, valid):
        """Re-score the chunk with the adapters as they were before its update (and, for contrast, after)."""
        params = list(self.lora.parameters())
        after = [p.detach().clone() for p in params]

        def load(values):
            with torch.no_grad():
                for p, v in zip(params, values):
                    p.copy_(v)

        # Same forward mode as the scoring forward (grad enabled), so the same kernels run.
        rescored_after = self.chunk_nll(*inputs)[0].detach()
        load(before)
        rescored_before = self.chunk_nll(*inputs)[0].detach()
        load(after)
        self.probe_diffs.append(
            (
                float((rescored_before - recorded)[valid].abs().max()),
                float((rescored_after - recorded)[valid].abs().max()),
            )
        )
        self.probes_left -= 1

    # ----- global phases -----
    def _global_phase(self, boundary: int, claimed: int):
        """One epoch of distributed SGD on all base weights over the first `boundary` scored documents in upstream's
        order (`phase_documents`): the shortest of them."""
        cfg, dist, model, device = self.cfg, self.dist, self.model, self.dist.device
        docs = phase_documents(self.batches, self.queue, claimed, boundary)
        stream = np.concatenate([self.host_tokens[s : s + n] for s, n in zip(self.starts[docs], self.lengths[docs])])
        n_chunks = -(-(stream.size - 1) // cfg.global_chunk_tokens)
        params = [p for p in model.parameters()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=cfg.global_lr, momentum=cfg.global_momentum)
        model.train()
        steps = 0
        for _ in range(cfg.global_epochs):
            for c in range(n_chunks - 1):  # cosine over chunks reaches zero at the last one: skipped
                for group in opt.param_groups:
                    group["lr"] = cfg.global_lr * 0.5 * (1 + math.cos(math.pi * c / (n_chunks - 1)))
                lo = c * cfg.global_chunk_tokens
                hi = min(lo + cfg.global_chunk_tokens, stream.size - 1)
                seqs = [(s, min(s + cfg.seq_len, hi)) for s in range(lo, hi, cfg.seq_len)]
                mine = seqs[dist.rank :: dist.world]
                for i in range(0, len(mine), cfg.global_batch_seqs):
                    part = mine[i : i + cfg.global_batch_seqs]
                    ids = np.full((len(part), cfg.seq_len), PAD_ID, dtype=np.int64)
                    targets = np.full_like(ids, PAD_ID)
                    mask = np.zeros(ids.shape, dtype=bool)
                    for row, (s, e) in enumerate(part):
                        ids[row, : e - s] = stream[s:e]
                        targets[row, : e - s] = stream[s + 1 : e + 1]
                        mask[row, : e - s] = True
                    ids, targets, mask = (torch.from_numpy(a) for a in (ids, targets, mask))
                    cuts = segment_offsets(ids).to(device)  # made on the host: no device-to-host sync
                    ids, targets, mask = ids.to(device), targets.to(device), mask.to(device)
                    nll = model(ids, targets, reduction="none", cu_seqlens=cuts)
                    ((nll * mask).sum() / (hi - lo)).backward()  # the chunk's mean over every rank's share
                self._all_reduce_grads(params)
                torch.nn.utils.clip_grad_norm_(params, cfg.global_grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                steps += 1
        self._freeze_base()
        return {"boundary": boundary, "docs": int(docs.size), "tokens": int(stream.size), "steps": steps}

    def _all_reduce_grads(self, params):
        if not self.dist.enabled:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.flatten() for p in params])
        self.dist.all_reduce_(flat)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    # ----- the whole evaluation -----
    def run(self, hints=None, boost: float = 0.0) -> TTTResult:
        """The whole evaluation; `hints` = (hint, gated) per stream position turns the tilt (by `boost`) on."""
        device, dist = self.dist.device, self.dist
        self.boost, self.hint, self.gated = boost, None, None
        if hints is not None:
            self.hint = torch.as_tensor(hints[0], dtype=torch.long, device=device)
            self.gated = torch.as_tensor(hints[1], device=device)
        self.totals, self.untilted = Totals(device), Totals(device)
        self.gated_count = torch.zeros((), dtype=torch.int64, device=device)
        self.coverage = torch.zeros(self.tokens.numel(), dtype=torch.int32, device=device)
        self.position_nll = torch.zeros(self.tokens.numel(), dtype=torch.float32, device=device)
        self.probes_left, self.probe_diffs = self.cfg.probe_batches, []
        self._freeze_base()
        counters = SharedCounters(dist)
        phase, phases, sgd_seconds = 0, [], 0.0
        start = time.perf_counter()
        while True:
            if phase < len(self.boundaries) and counters.add("scored", 0) >= self.boundaries[phase]:
                dist.barrier()  # every rank has finished the batches it claimed
                t0 = time.perf_counter()
                phases.append(self._global_phase(self.boundaries[phase], counters.add("claimed", 0)))
                self.lora.reinitialize(torch.Generator().manual_seed(LORA_SEED + phase + 1))
                dist.barrier()
                sgd_seconds += time.perf_counter() - t0
                phase += 1
                continue
            index = counters.add("claimed", 1) - 1
            if index >= len(self.queue):
                if phase == len(self.boundaries):
                    break
                while counters.add("scored", 0) < self.boundaries[phase]:  # others are still scoring
                    time.sleep(0.005)
                continue
            docs = self.batches[self.queue[index]]
            self._batch(index, docs)
            counters.add("scored", int(docs.size))
        sync(device)
        seconds = {"ttt": time.perf_counter() - start, "global_sgd": sgd_seconds}
        dist.barrier()
        gated = int(dist.all_reduce_(self.gated_count.clone()))
        probe = self._probe_summary()
        return TTTResult(
            totals=self.totals.reduced(dist),
            untilted=self.untilted.reduced(dist),
            gated=gated,
            coverage=dist.all_reduce_(self.coverage),
            position_nll=self.position_nll,
            probe=probe,
            seconds=seconds,
            phases=phases,
        )

    def _probe_summary(self) -> dict:
        diffs = torch.tensor(self.probe_diffs or [(0.0, 0.0)], dtype=torch.float64, device=self.dist.device)
        counts = torch.tensor([float(len(self.probe_diffs))], dtype=torch.float64, device=self.dist.device)
        worst = self.dist.all_reduce_(diffs.max(0).values, op=torch_dist.ReduceOp.MAX)
        counts = self.dist.all_reduce_(counts)
        return {
            "chunks": int(counts),
            "tolerance": PROBE_TOLERANCE,
            "max_abs_diff_before_update": float(worst[0]),
            "max_abs_diff_after_update": float(worst[1]),
            "passed": bool(counts > 0) and float(worst[0]) <= PROBE_TOLERANCE,
        }
