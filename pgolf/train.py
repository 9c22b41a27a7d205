"""Training stage (docs/record-stack.md §4): the record model trained by sharded Muon + AdamW on packed documents
(`train.loader: documents`, pgolf.loader) or on #1572's shuffled windows (`shuffled`, pgolf.window_loader).

    python -m pgolf.train --config CFG --manifest resources/data/<ds>/manifest.json \\
        --audit resources/data/<ds>/data_audit.json --seed S --out-dir results/<name>/seed<S>/train

Several ranks: `torchrun --standalone --nproc-per-node=N -m pgolf.train ...` (N divides 8; the global batch stays
`train.batch_tokens` through 8 // N accumulated micro-steps). CFG (a resolved config, JSON text or path) holds the
sections model, train, hardware and run, and eval's window keys (RAW_VAL_KEYS): after the last step the raw
(pre-EMA) weights are scored on the val split, as upstream logs it. The budget is wall clock from the first step
to the last, logging, syncs and checkpoint saves included. Writes model.pt ({"config", "state_dict": EMA weights fp32
by the unbanked names, "train": summary}), summary.json and log.jsonl into the out dir. `train.checkpoint_minutes`
> 0 turns checkpoints on (pgolf.checkpoint; #1855 saves none, so the record's 0 saves none and resumes nothing): a
checkpoint.pt there, written every that many minutes and when a signal stops the loop, is resumed automatically
(also on another world size: logged, and listed under "resumes" in summary.json) and deleted once model.pt is
written. SIGINT/SIGTERM stop every rank at the end of a step. One trainer at a time per out dir: rank 0 holds an
fcntl lock on .train.lock there and first deletes what a killed run left of its temporaries. `--compile-cache DIR`
(the rule passes results/<name>/compile_cache) keeps torch.compile's caches there, so a re-run or a resume on the
same machine starts training without recompiling.
"""

import argparse
import copy
import dataclasses
import math
import os
import resource
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist

from . import compile_cache
from . import dist as pdist
from .attention import segment_offsets
from .bpb import batch_seqs, diagnostic_eval, load_val
from .cli import doc_summary, interrupted_exit
from .errors import PgolfError
from .io import atomic_path, durable_replace, lock_folder, read_json, sweep_temporaries, unlock_folder, write_json
from .loader import CHUNKS, LOADERS, DocumentLoader, accum_steps, start_position
from .model import GPT, ModelConfig, config_dict
from .optim import EMA, OptimConfig, Optimizers, lr_multiplier, muon_momentum
from .runlog import RunLog
from .shards import file_sha256, load_manifest, shard_paths
from .stageconfig import from_dict, load_stage_config

PACKINGS = ("rows", "stream")
LOCK_NAME = ".train.lock"
OUTPUTS = ("model.pt", "summary.json")  # what the trainer writes through atomic_path (pgolf.checkpoint: its own)
# The `eval` keys the raw weights' last-step val reads (the rule passes these alone, so an eval-only change does not
# re-run training); pgolf.evaluate.EvalConfig holds their defaults.
RAW_VAL_KEYS = ("seq_len", "batch_tokens", "sliding_stride", "truncate_tail", "val_docs_limit")


@dataclasses.dataclass
class TrainConfig(OptimConfig):
    """The `train:` section; record values (PR #1855, docs/record-stack.md Appendix A) as defaults."""

    schedule: str = "time"  # time: the record's wallclock schedule; steps: reproducible, over `steps`
    steps: int = 20000  # the steps schedule's length; in the time schedule only a cap (never reached)
    budget_seconds: float = 600.0
    hessian_reserve_seconds: float = 0.5  # kept from the budget for the Hessian collection loop
    batch_tokens: int = 786432
    loader: str = "documents"  # documents: the record's BOS-aligned spans; shuffled: #1572's random windows per rank
    packing: str = "stream"  # stream: the record loader's one row per micro-batch; rows: also cut at row starts
    warmdown_frac: float = 0.85
    warmdown_steps: int = 0  # #1512's warmdown over the last N steps' worth of measured step time; 0 = warmdown_frac
    min_lr: float = 0.1
    late_qat_threshold: float = 0.0  # #1512: fake int6 weights once the LR multiplier falls below this; 0 = off
    seq_change_warmup_steps: int = 0  # LR ramp after each change of model.seq_schedule's length (#2014); 0 = off
    ema_decay: float = 0.9965
    compile: bool = True  # torch.compile on GPU (never on the CPU)
    compile_warmup_steps: int = 20  # per looping state and sequence length, outside the timer, then undone
    checkpoint_minutes: float = 0.0  # minutes between checkpoints (pgolf.checkpoint); 0: none (#1855 saves none)
    log_every: int = 500  # TRAIN_LOG_EVERY

    def check(self):
        super().check()
        if self.loader not in LOADERS:
            raise PgolfError(f"config train.loader: {self.loader!r} is not one of {LOADERS}; fix it in your config")
        if self.packing not in PACKINGS:
            raise PgolfError(f"config train.packing: {self.packing!r} is not one of {PACKINGS}; fix it in your config")
        if self.schedule not in ("time", "steps"):
            raise PgolfError(f"config train.schedule: {self.schedule!r} is not time or steps; fix it in your config")
        if self.schedule == "time" and self.budget_seconds <= self.hessian_reserve_seconds:
            raise PgolfError("config train.budget_seconds must exceed train.hessian_reserve_seconds; fix the config")

    @property
    def loop_seconds(self) -> float:
        return self.budget_seconds - self.hessian_reserve_seconds


def schedule_frac(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Training progress in [0, 1]: steps done, or loop seconds spent out of the budget less the reserve."""
    frac = step / cfg.steps if cfg.schedule == "steps" else elapsed / cfg.loop_seconds
    return min(max(frac, 0.0), 1.0)


def lr_schedule(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """The LR multiplier: warmdown_frac's over the training fraction, or with warmdown_steps #1512's: the steps
    schedule decays linearly over the last N steps; the time schedule over the last N x the mean step time so far
    (remaining / (N x elapsed / step)), floored at min_lr either way."""
    n = cfg.warmdown_steps
    if n <= 0:
        return lr_multiplier(schedule_frac(cfg, step, elapsed), cfg.warmdown_frac, cfg.min_lr)
    if cfg.schedule == "steps":
        mult = min((cfg.steps - step) / n, 1.0)
    else:
        warmdown = n * elapsed / max(step, 1)
        remaining = max(cfg.loop_seconds - elapsed, 0.0)
        mult = remaining / max(warmdown, 1e-12) if remaining <= warmdown else 1.0
    return max(mult, cfg.min_lr)


def pack(tokens: torch.Tensor, seq_len: int, packing: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A micro-batch's tokens (n * seq_len,) as the model's rows, and their attention cuts (cu_seqlens). rows:
    (n, seq_len) cut at every BOS and row start; stream: one (1, n * seq_len) row cut at every BOS and every seq_len
    from a document's start, as the record's DocumentPackingLoader cuts (docs/record-stack.md §4)."""
    if packing == "stream":
        ids = tokens.reshape(1, -1)
        return ids, segment_offsets(ids, seq_len)
    ids = tokens.reshape(-1, seq_len)
    return ids, segment_offsets(ids)


def seq_lens(model_cfg: ModelConfig) -> list[int]:
    """Every sequence length training runs: model.seq_schedule's (pgolf.seq_schedule), else train_seq_len."""
    if not model_cfg.seq_schedule:
        return [model_cfg.train_seq_len]
    from .seq_schedule import scheduled_lens  # shipped only where model.seq_schedule is set (codepack.OPTIONAL)

    return scheduled_lens(model_cfg.seq_schedule)


def check_inputs(model_cfg, cfg, manifest_path, audit_path):
    audit = read_json(audit_path)
    if audit.get("passed") is not True:
        problems = "; ".join(audit.get("problems", [])) or "no `passed: true` in it"
        raise PgolfError(f"{audit_path}: the data audit failed ({problems}); fix the data and re-run the audit")
    manifest = load_manifest(manifest_path)
    if manifest["vocab_size"] > model_cfg.vocab_size:
        raise PgolfError(
            f"{manifest_path}: vocabulary {manifest['vocab_size']} exceeds model.vocab_size {model_cfg.vocab_size}; "
            "set model.vocab_size to the data's vocabulary"
        )
    if cfg.loader == "shuffled" and model_cfg.seq_schedule:
        raise PgolfError(
            "config: train.loader shuffled draws windows of model.train_seq_len alone; drop model.seq_schedule "
            "or use train.loader documents"
        )
    chunk = cfg.batch_tokens // CHUNKS
    bad = [n for n in seq_lens(model_cfg) if cfg.batch_tokens % CHUNKS or chunk % n]
    if bad:
        raise PgolfError(
            f"config train.batch_tokens {cfg.batch_tokens}: each of the {CHUNKS} micro-batches must hold whole "
            f"sequences of {bad}; use a multiple of {CHUNKS} x the sequence length"
        )


def load_raw_val(manifest_path, window: dict | None):
    """The val stream of the last-step raw-weights score (None without an `eval` section): its document limit and
    tail rule as the eval stages cut it."""
    if window is None:
        return None
    missing = [k for k in RAW_VAL_KEYS if k not in window]
    if missing:
        raise PgolfError(f"--config: eval lacks {missing}; pass a config resolved by `pgolf.config resolve`")
    truncate = window["seq_len"] if window["truncate_tail"] else None
    return load_val(manifest_path, window["val_docs_limit"], truncate)


def peak_memory_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Trainer:
    """One rank's training run; rank 0 writes the log, checkpoints and outputs."""

    def __init__(
        self, config, model_cfg, cfg, paths, seed, out_dir, dist, stop_after_step=None, manifest_sha256=None, val=None
    ):
        """`val` (a ValData cut as config["eval"] says): the raw weights are scored on it after the last step, as
        upstream's last-step val; None skips that."""
        self.config, self.model_cfg, self.cfg = config, model_cfg, cfg
        self.val = val
        self.paths, self.seed, self.out_dir, self.dist = paths, seed, Path(out_dir), dist
        self.manifest_sha256 = manifest_sha256  # a resume must train on the same data (pgolf.checkpoint)
        self.stop_after_step = stop_after_step
        self.device = dist.device
        self.accum = accum_steps(dist.world)
        self.compiled = cfg.compile and self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(seed)  # the same initial weights on every rank
        self.model = GPT(model_cfg).to(self.device).train()
        self.model.set_attention(model_cfg.attention, compiled=self.compiled)
        # Automatic dynamic shapes: the per-batch document layout may vary in size, and a static compile would
        # recompile for every new size.
        self.forward = torch.compile(self.model) if self.compiled else self.model
        self.opt = Optimizers(self.model.param_groups(), cfg, dist.world, dist.rank, compile_muon=self.compiled)
        self.ema = EMA(self.model.parameters(), cfg.ema_decay)
        self.step, self.elapsed, self.position = 0, 0.0, start_position(cfg.loader)
        self.phase = {"before": [0.0, 0], "after": [0.0, 0]}  # looping off/on: [seconds, steps]
        self.looping_from = None
        self.qat_from = None  # the step #1512's late QAT switched on at
        self.seq_len, self.seq_changed_at = None, None  # the last step's sequence length; the step it changed at
        self.compile_seconds = None  # the compile warm-up's wall seconds, outside the training timer
        self.raw = None  # the raw weights' val score after the last step (raw_val)
        self.records = []  # the log's records after the header, kept for a resumed run's log
        self.resumes = []  # {"step", "from_world_size", "world_size"} per resume, kept across resumes
        self.log = None
        if dist.is_main:
            self.log = RunLog("train", config, self.out_dir / "log.jsonl.partial", echo=not sys.stderr.isatty())

    # ----- steps -----
    def micro_batches(self, rows: torch.Tensor, seq_len: int):
        """(ids, targets, layout) on the device for each micro-step of the loader's CPU rows, packed as
        `train.packing` says, one at a time: the host builds micro-step k+1's layout while the GPU runs micro-step
        k. The shuffled loader's windows (accum, n, seq_len + 1) are n rows, each with its own last target, cut as
        `rows` packing cuts. The document cuts are made here on the CPU (no device-to-host sync inside the step) and
        the layout from them outside the compiled graph (built inside it, the flex block mask came with a NaN loss
        on an H200; see GPT.layout). The varlen backends' cut count is marked dynamic, so the graph never
        recompiles for it."""
        on_device = rows.to(self.device, non_blocking=True)
        windows = rows.dim() == 3
        for k in range(self.accum):
            if windows:
                ids, cu = pack(rows[k, :, :-1].reshape(-1), seq_len, "rows")
                ids, targets = on_device[k, :, :-1].contiguous(), on_device[k, :, 1:].contiguous()
            else:
                ids, cu = pack(rows[k, :-1], seq_len, self.cfg.packing)
                ids, targets = on_device[k, :-1].view(ids.shape), on_device[k, 1:].view(ids.shape)
            cu = cu.to(self.device, non_blocking=True)
            if self.compiled:
                torch._dynamo.maybe_mark_dynamic(cu, 0)
            yield ids, targets, self.model.layout(ids, cu, seq_len)

    def train_step(self, rows, seq_len, lr_mult, momentum):
        """One global batch (the loader's CPU rows): accumulated micro-steps, then the optimizer; returns this
        rank's mean loss and the gradient norm."""
        total = torch.zeros((), device=self.device)
        for ids, targets, layout in self.micro_batches(rows, seq_len):
            loss = self.forward(ids, targets, layout=layout)
            (loss / self.accum).backward()
            total += loss.detach()
        grad_norm = self.opt.step(lr_mult, momentum)
        self.opt.zero_grad()
        return total / self.accum, grad_norm

    def compile_warmup(self):
        """Compile every (looping, QAT, sequence length) variant outside the timer, then restore the initial state."""
        start = time.perf_counter()
        saved_model = copy.deepcopy(self.model.state_dict())
        saved_opt = copy.deepcopy(self.opt.state_dict())
        loader = self.make_loader(start_position(self.cfg.loader))
        try:
            for looping in sorted({False, self.model_cfg.num_loops > 0}):
                self.model.looping = looping
                for qat in sorted({False, self.cfg.late_qat_threshold > 0}):
                    self.model.qat = qat
                    for seq_len in seq_lens(self.model_cfg):
                        for _ in range(self.cfg.compile_warmup_steps):
                            self.train_step(next(loader), seq_len, 1.0, muon_momentum(0, self.cfg))
        finally:
            loader.close()
        self.model.load_state_dict(saved_model)
        self.opt.load_state_dict(saved_opt)
        self.model.looping = False
        self.model.qat = self.qat_from is not None
        self.sync()
        self.compile_seconds = round(time.perf_counter() - start, 2)
        self.emit({"event": "compile_warmup_done", "seconds": self.compile_seconds})

    def make_loader(self, position):
        common = {
            "world": self.dist.world,
            "rank": self.dist.rank,
            "position": position,
            "pin_memory": self.device.type == "cuda",
            "vocab_size": self.model_cfg.vocab_size,
        }
        if self.cfg.loader == "shuffled":
            from .window_loader import WindowLoader  # shipped only where it runs (pgolf.codepack.OPTIONAL)

            return WindowLoader(self.paths, self.cfg.batch_tokens, self.model_cfg.train_seq_len, **common)
        return DocumentLoader(self.paths, self.cfg.batch_tokens, **common)

    def emit(self, record: dict):
        if self.log:
            self.records.append(record)
            self.log.write(record)

    def sync(self):
        pdist.sync(self.device)

    def mean_over_ranks(self, value: torch.Tensor) -> float:
        value = value.detach().float().clone()
        if self.dist.enabled:
            torch_dist.all_reduce(value)
            value /= self.dist.world
        return float(value)

    # ----- the loop -----
    def agree(self, checkpoint_due: bool) -> tuple[bool, bool, bool]:
        """(done, checkpoint now, interrupted), the same on every rank: one all-reduce (MAX) of the loop time,
        the checkpoint flag and the interrupt flag (a signal may reach the ranks at different steps)."""
        flags = torch.tensor(
            [self.elapsed, float(checkpoint_due), float(INTERRUPT.requested)], device=self.device, dtype=torch.float64
        )
        if self.dist.enabled:
            torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX)
        done = self.step >= self.cfg.steps
        if self.cfg.schedule == "time":
            self.elapsed = float(flags[0])  # the slowest rank decides when the budget is spent
            done = done or self.elapsed >= self.cfg.loop_seconds
        return done, float(flags[1]) > 0 and not done, float(flags[2]) > 0 and not done

    def run(self):
        saver = None
        if self.cfg.checkpoint_minutes > 0:
            from .checkpoint import Checkpoints  # shipped only where checkpoints are on (pgolf.codepack.OPTIONAL)

            saver = Checkpoints(self)
            saver.resume()
        INTERRUPT.resumes_from = self.step
        if self.compiled and self.cfg.compile_warmup_steps > 0:
            self.compile_warmup()
        loader = self.make_loader(self.position)
        INTERRUPT.in_loop = True  # from here a signal stops at the end of the step (with a checkpoint, if on)
        bar = _progress_bar(self.cfg) if self.dist.is_main and sys.stderr.isatty() else None
        interval = [0.0, 0]  # seconds and steps since the last log record
        loss = torch.zeros((), device=self.device)
        done = self.step >= self.cfg.steps
        # The training clock is wall clock from here (a resume adds its checkpoint's seconds): steps, logging,
        # syncs and checkpoint saves all count against the budget, as upstream's training_time_ms does.
        self.sync()
        clock_start, resumed_seconds = time.perf_counter(), self.elapsed
        last_checkpoint = clock_start
        while not done:
            self.elapsed = resumed_seconds + time.perf_counter() - clock_start
            frac = schedule_frac(self.cfg, self.step, self.elapsed)
            looping = self.model_cfg.num_loops > 0 and frac >= self.model_cfg.enable_looping_at
            if looping and self.looping_from is None:
                self.looping_from = self.step
                self.emit({"event": "looping_enabled", "step": self.step, "frac": round(frac, 4)})
            self.model.looping = looping
            seq_len, ramp = self.model_cfg.train_seq_len, 1.0
            if self.model_cfg.seq_schedule:
                from .seq_schedule import advance

                seq_len, ramp = advance(self, frac)
            self.seq_len = seq_len
            lr_mult = lr_schedule(self.cfg, self.step, self.elapsed)
            if self.qat_from is None and lr_mult < self.cfg.late_qat_threshold:
                self.qat_from, self.model.qat = self.step, True
                self.emit({"event": "late_qat_enabled", "step": self.step, "lr_mult": round(lr_mult, 5)})
            lr_mult *= ramp
            start = time.perf_counter()
            loss, grad_norm = self.train_step(next(loader), seq_len, lr_mult, muon_momentum(self.step, self.cfg))
            self.ema.update()
            self.sync()
            now = time.perf_counter()
            seconds = now - start
            self.step, self.position = self.step + 1, loader.state_dict()
            self.elapsed = resumed_seconds + now - clock_start
            for acc in (self.phase["after" if looping else "before"], interval):
                acc[0] += seconds
                acc[1] += 1
            minutes = (now - last_checkpoint) / 60
            done, save, interrupted = self.agree(0 < self.cfg.checkpoint_minutes <= minutes)
            if done or self.step % self.cfg.log_every == 0:
                self.log_step(loss, grad_norm, lr_mult, seq_len, looping, interval)
                interval = [0.0, 0]
            if bar:
                bar.update(1 if self.cfg.schedule == "steps" else seconds)
            stop_here = (self.stop_after_step == self.step or interrupted) and not done
            if saver and (save or stop_here):
                self.elapsed = resumed_seconds + time.perf_counter() - clock_start
                saver.save()  # the saved clock leaves out this save; the run that goes on counts it
                last_checkpoint = time.perf_counter()
            if stop_here:
                reason = "interrupted" if interrupted else "--stop-after-step"
                self.emit({"event": "stopped", "step": self.step, "reason": reason})
                loader.close()
                if bar:
                    bar.close()
                if interrupted:
                    raise Interrupted(self.step if saver else 0)
                return None
        loader.close()
        if bar:
            bar.close()
        self.raw_val()
        summary = self.finish(self.mean_over_ranks(loss))
        if saver:
            saver.remove()
        return summary

    def raw_val(self):
        """Score the raw (pre-EMA) weights after the last step, outside the clock, as upstream logs
        `val_loss`/`val_bpb` at its last step before applying the EMA."""
        if self.val is None:
            return
        window = self.config["eval"]
        seqs = batch_seqs(window["batch_tokens"], window["seq_len"], self.dist.world)
        self.model.eval()
        start = time.perf_counter()
        result = diagnostic_eval(self.model, self.val, window["seq_len"], seqs, self.dist, window["sliding_stride"])
        self.sync()
        self.raw = {
            "step": self.step,
            "val_loss": result["val_loss"],
            "val_bpb": result["val_bpb"],
            "scored": result["scored"],
            "seconds": round(time.perf_counter() - start, 3),
        }
        self.emit({"event": "raw_val", **self.raw})
        self.model.train()

    def log_step(self, loss, grad_norm, lr_mult, seq_len, looping, interval):
        loss_value = self.mean_over_ranks(loss)
        seconds, steps = interval
        self.emit(
            {
                "event": "step",
                "step": self.step,
                "loss": round(loss_value, 5),
                "grad_norm": round(float(grad_norm), 4),
                "lr_mult": round(lr_mult, 5),
                "matrix_lr": self.cfg.matrix_lr * lr_mult,
                "seq_len": seq_len,
                "looping": looping,
                "elapsed_s": round(self.elapsed, 3),
                "ms_per_step": round(1000 * seconds / max(steps, 1), 2),
                "tokens_per_s": round(self.cfg.batch_tokens * steps / max(seconds, 1e-9)),
                "peak_mem_mib": round(peak_memory_mib(self.device), 1),
            }
        )
        if not math.isfinite(loss_value):  # every rank sees the same mean, so every rank stops here
            raise PgolfError(
                f"train: the loss is {loss_value} at step {self.step} ({self.out_dir}/log.jsonl.partial); "
                "the run diverged, so no model is written; lower train.matrix_lr, embed_lr and "
                "scalar_lr or train.grad_clip and run again"
            )

    def finish(self, final_loss: float) -> dict:
        """Swap the EMA in, write model.pt, summary.json and log.jsonl (rank 0)."""
        self.ema.copy_to_params()
        ms = {k: round(1000 * s / n, 2) if n else None for k, (s, n) in self.phase.items()}
        summary = {
            "steps": self.step,
            "train_seconds": round(self.elapsed, 3),
            "schedule": self.cfg.schedule,
            "ms_per_step_before_looping": ms["before"],
            "ms_per_step_after_looping": ms["after"],
            "looping_from_step": self.looping_from,
            "qat_from_step": self.qat_from,
            "compile_warmup_seconds": self.compile_seconds,
            "tokens": self.step * self.cfg.batch_tokens,
            "final_loss": round(final_loss, 5),
            "peak_memory_mib": round(peak_memory_mib(self.device), 1),
            "world_size": self.dist.world,
            "accum_steps": self.accum,
            "seed": self.seed,
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "attention": self.model.backend(self.device).name,
            "resumes": self.resumes,
            "raw_val": self.raw,
        }
        if self.dist.is_main:
            state = {k: v.detach().float().cpu() for k, v in self.model.unbanked_state_dict().items()}
            self.emit({"event": "done", **summary})
            self.log.close()
            durable_replace(self.out_dir / "log.jsonl.partial", self.out_dir / "log.jsonl")
            write_json(self.out_dir / "summary.json", summary)
            with atomic_path(self.out_dir / "model.pt") as tmp:
                torch.save({"config": config_dict(self.model_cfg), "state_dict": state, "train": summary}, tmp)
        self.dist.barrier()
        return summary


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped training; args[0] is the step the next run resumes from (0: starts over)."""


class _Interrupt:
    """The signal flag the loop reads each step. Before the loop (model build, resume, compile warm-up) a signal
    stops at once: nothing is written there, and the last checkpoint (if any) holds `resumes_from`."""

    requested = False
    in_loop = False
    resumes_from = 0

    def handle(self, signum, frame):
        self.requested = True
        if not self.in_loop:
            raise Interrupted(self.resumes_from)

    def install(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.handle)


INTERRUPT = _Interrupt()


def _progress_bar(cfg: TrainConfig):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    if cfg.schedule == "steps":
        return tqdm(total=cfg.steps, unit="step", desc="train", dynamic_ncols=True)
    return tqdm(
        total=round(cfg.loop_seconds),
        unit="s",
        desc="train",
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total} s [{elapsed}<{remaining}]",
    )


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.train", description=doc_summary(__doc__))
    parser.add_argument("--config", required=True, help="resolved config: JSON text or path")
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--audit", required=True, type=Path)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--stop-after-step", type=int, help="debug: checkpoint after this step and exit")
    compile_cache.add_argument(parser)
    args = parser.parse_args(argv)
    config = load_stage_config(args.config)
    missing = [s for s in ("model", "train", "hardware") if s not in config]
    if missing:
        raise PgolfError(f"--config lacks section(s) {missing}; pass a config resolved by `pgolf.config resolve`")
    stop = args.stop_after_step
    if stop is not None and from_dict(TrainConfig, config["train"], "config train").checkpoint_minutes <= 0:
        raise PgolfError(
            "--stop-after-step: train.checkpoint_minutes is 0 (no checkpoints), so nothing would resume the run; "
            "set it above 0 (a value longer than the run saves only at the stop)"
        )
    run(config, args.manifest, args.audit, args.seed, args.out_dir, args.compile_cache, stop)


def run(config: dict, manifest: Path, audit: Path, seed: int, out_dir: Path, cache_dir=None, stop_after_step=None):
    """Train one seed into out_dir (model.pt, summary.json, log.jsonl); `config` holds model, train and hardware.

    train.run(config, Path("resources/data/<ds>/manifest.json"), Path(".../data_audit.json"), 1,
              Path("results/<name>/seed1/train"), Path("results/<name>/compile_cache"))
    """
    compile_cache.use(cache_dir)
    model_cfg = ModelConfig.from_dict(config["model"], "config model")
    cfg = from_dict(TrainConfig, config["train"], "config train")
    check_inputs(model_cfg, cfg, manifest, audit)
    paths = shard_paths(manifest, "train")
    manifest_sha256 = file_sha256(manifest)  # a resume must train on the same data
    val = load_raw_val(manifest, config.get("eval"))
    INTERRUPT.install()
    lock = None
    try:
        dist = pdist.init(config["hardware"]["gpus"])
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_out_dir(out_dir, dist)
        Trainer(config, model_cfg, cfg, paths, seed, out_dir, dist, stop_after_step, manifest_sha256, val).run()
    except Interrupted as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            step = stop.args[0]
            then = f"resumes from step {step}" if step else "starts from the first step (no checkpoint)"
            print(f"train: interrupted; the next run {then}", file=sys.stderr, flush=True)
        interrupted_exit()
    finally:
        if lock:
            unlock_folder(lock)
        pdist.shutdown()


def lock_out_dir(out_dir: Path, dist):
    """Rank 0 locks the out dir and sweeps a killed run's temporaries; every rank learns whether it could."""
    lock, error = None, None
    if dist.is_main:
        try:
            lock = lock_folder(out_dir, LOCK_NAME, "trainer")
            sweep_temporaries(out_dir, OUTPUTS)
        except PgolfError as e:
            error = e
    ok = dist.all_reduce_(
        torch.tensor([error is None], dtype=torch.float32, device=dist.device), op=torch_dist.ReduceOp.MIN
    )
    if error:
        raise error
    if not ok.item():
        raise PgolfError(f"{out_dir}: rank 0 could not lock this out dir (its message says why)")
    return lock


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
