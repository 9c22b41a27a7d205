"""Hessians for GPTQ and activation RMS for AWQ-lite (docs/record-stack.md §5.1), one torchrun job over the trained model.

    python -m pgolf.launch --gpus 8 -- -m pgolf.hessians --config CFG \
        --model results/<name>/seed<S>/train/model.pt --manifest resources/data/<ds>/manifest.json \
        --seed S --out results/<name>/seed<S>/train/hessians.pt

CFG holds the `hessians` and `hardware` sections. Every rank draws `calibration_batches` batches of `batch_seqs`
random `seq_len`-token windows from its own train shards (files [rank::world], an RNG seeded by (seed, rank)) and
runs the model in eval mode with looping on; the `capture` hook sums XᵀX of every quantized matrix's input over
every application (looped layers count each pass). Unlike the record, the sums are all-reduced over the ranks
and divided by the total batch count, so every rank's data counts. With `source: self` (#1512) no data is read:
every rank generates the same `self_seqs` sequences of seq_len tokens (pgolf.selfcalib, seeded by --seed, as
#1512 seeded them with its run seed), runs its share (sequence i on rank i mod world) with the hook, each sequence
a batch of one (H divides by self_seqs); the generation counts toward the loop seconds. Writes hessians.pt ({name: H (in, in) fp32,
"act_rms": {name: (in,)}}) and hessians.json (batches, tokens, the collection loop's seconds, which count
toward the training budget).
"""

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from . import dist as pgdist
from .cli import doc_summary
from .errors import PgolfError
from .io import atomic_path, write_json
from .model import GPT, load_trained
from .runlog import RunLog
from .shards import load_manifest, read_shard, shard_paths
from .stageconfig import from_dict, load_stage_config


@dataclass
class HessianConfig:
    """Calibration for GPTQ; defaults are the record's (GPTQ_CALIBRATION_BATCHES=16 of 48 x 2,048 per rank)."""

    calibration_batches: int = 16  # per rank
    batch_seqs: int = 48
    seq_len: int = 2048
    source: str = "data"  # data: train-shard windows; self: sequences the model generates (#1512)
    self_seqs: int = 64  # source self: sequences generated (each one calibration batch)
    self_temperature: float = 0.8
    self_batch: int = 8  # source self: sequences generated together

    def __post_init__(self):
        self.check()

    def check(self):
        """Run where the DAG builds the config; left out of the script (pgolf.model.ModelConfig.check says why)."""
        for key in ("calibration_batches", "batch_seqs", "seq_len", "self_seqs", "self_batch"):
            if getattr(self, key) < 1:
                raise PgolfError(f"config hessians.{key}: must be at least 1; fix it in config.yaml or your recipe")
        if self.source not in ("data", "self"):
            raise PgolfError(f"config hessians.source: {self.source!r} is not data or self; fix your config")
        if self.self_temperature <= 0:
            raise PgolfError("config hessians.self_temperature: must be positive; fix your config")


def rank_files(paths: list, rank: int, world: int) -> list:
    """The record's split of the train files over ranks ([rank::world]); with fewer files than ranks every rank
    reads all of them (its own RNG still draws its own windows)."""
    return list(paths[rank::world]) if len(paths) >= world else list(paths)


def rank_rng(seed: int, rank: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, rank]))


class CalibrationWindows:
    """Random windows from a set of shards, as upstream's ShuffledSequenceLoader draws them: per shard a random
    phase and a random permutation of its seq_len-token windows (not aligned to documents); every window picks a
    shard with probability proportional to its remaining windows; when all are used, a new epoch starts."""

    def __init__(self, paths: list, seq_len: int, rng: np.random.Generator, vocab_size=None):
        self.shards = [read_shard(p, vocab_size) for p in paths]
        self.seq_len = seq_len
        self.rng = rng
        if not any(len(tokens) >= seq_len for tokens in self.shards):
            raise PgolfError(
                f"{paths[0] if paths else 'manifest'}: the train shards hold no window of {seq_len} tokens; "
                "lower hessians.seq_len or use more training data"
            )
        self._new_epoch()

    def _new_epoch(self):
        self.starts = []
        for tokens in self.shards:
            phase = int(self.rng.integers(0, self.seq_len))
            count = max(0, (len(tokens) - phase) // self.seq_len)
            self.starts.append(list(phase + self.seq_len * self.rng.permutation(count)))

    def window(self) -> np.ndarray:
        remaining = np.array([len(s) for s in self.starts], dtype=np.float64)
        if remaining.sum() == 0:
            self._new_epoch()
            remaining = np.array([len(s) for s in self.starts], dtype=np.float64)
        shard = int(self.rng.choice(len(remaining), p=remaining / remaining.sum()))
        start = int(self.starts[shard].pop())
        return np.asarray(self.shards[shard][start : start + self.seq_len])

    def batch(self, seqs: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.window() for _ in range(seqs)]).astype(np.int64))


class HessianSums:
    """The `capture` hook: per matrix name, Σ XᵀX and Σ x² per input column (fp32), and the row count."""

    def __init__(self):
        self.xtx, self.sq, self.rows = {}, {}, {}

    def __call__(self, name: str, x: torch.Tensor):
        x = x.float()
        if name not in self.xtx:
            self.xtx[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
            self.sq[name] = torch.zeros(x.shape[1], device=x.device)
            self.rows[name] = torch.zeros((), dtype=torch.float64, device=x.device)
        self.xtx[name].addmm_(x.T, x)
        self.sq[name] += (x * x).sum(dim=0)
        self.rows[name] += x.shape[0]

    def all_reduce(self, dist: pgdist.Dist):
        for name in sorted(self.xtx):  # the same order on every rank
            for t in (self.xtx[name], self.sq[name], self.rows[name]):
                dist.all_reduce_(t)

    def result(self, total_batches: int) -> dict:
        """{name: H = ΣXᵀX / total_batches, "act_rms": {name: sqrt(Σx² / rows)}} on the CPU."""
        out = {name: (h / total_batches).cpu() for name, h in sorted(self.xtx.items())}
        out["act_rms"] = {name: (self.sq[name] / self.rows[name].float()).sqrt().cpu() for name in sorted(self.xtx)}
        return out


@torch.no_grad()
def collect(model: GPT, windows: CalibrationWindows, config: HessianConfig, device) -> tuple[HessianSums, float]:
    """Run the calibration batches through the model (eval mode, looping on); return the sums and loop seconds."""
    model.eval()
    model.looping = True
    sums = HessianSums()
    batches = [windows.batch(config.batch_seqs) for _ in range(config.calibration_batches)]
    pgdist.sync(device)
    start = time.perf_counter()
    for ids in batches:
        model(ids.to(device, non_blocking=True), capture=sums)
    pgdist.sync(device)
    return sums, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.hessians", description=doc_summary(__doc__))
    parser.add_argument("--config", required=True, help="JSON text or path with the hessians and hardware sections")
    parser.add_argument("--model", required=True, help="results/<name>/seed<S>/train/model.pt")
    parser.add_argument("--manifest", required=True, help="resources/data/<ds>/manifest.json")
    parser.add_argument("--seed", type=int, required=True, help="seeds the calibration windows (with the rank)")
    parser.add_argument("--out", required=True, help="results/<name>/seed<S>/train/hessians.pt")
    args = parser.parse_args(argv)
    run(load_stage_config(args.config), args.model, args.manifest, args.seed, args.out)


def run(config: dict, model_path, manifest, seed: int, out):
    """Collect the Hessians of the model at model_path on every rank; `config` holds hessians and hardware.

    hessians.run(config, "results/<name>/seed1/train/model.pt", "resources/data/<ds>/manifest.json", 1,
                 "results/<name>/seed1/train/hessians.pt")
    """
    calib = from_dict(HessianConfig, config.get("hessians"), "config hessians")
    dist = pgdist.init(config.get("hardware", {}).get("gpus", 0))
    try:
        log = RunLog("hessians", config, echo=dist.is_main)
        model, model_config = load_trained(model_path, dist.device)
        vocab = load_manifest(manifest)["vocab_size"]
        if vocab > model_config["vocab_size"]:
            raise PgolfError(
                f"{manifest}: vocabulary {vocab} exceeds the model's {model_config['vocab_size']}; "
                "pass the manifest the model was trained on"
            )
        paths = shard_paths(manifest, "train")
        if not paths:
            raise PgolfError(f"{manifest}: lists no train shards; re-run the data stage")
        files = rank_files(paths, dist.rank, dist.world)
        if calib.source == "self":
            from . import selfcalib  # shipped only where hessians.source is self (pgolf.codepack.OPTIONAL)

            sums, seconds = selfcalib.collect(model, calib, seed, dist)
            total_batches, batch_seqs, seq_tokens = calib.self_seqs, 1, calib.seq_len - 1
        else:
            windows = CalibrationWindows(files, calib.seq_len, rank_rng(seed, dist.rank), vocab)
            sums, seconds = collect(model, windows, calib, dist.device)
            total_batches = calib.calibration_batches * dist.world
            batch_seqs, seq_tokens = calib.batch_seqs, calib.seq_len
        sums.all_reduce(dist)
        loop_seconds = dist.all_reduce_(torch.tensor([seconds], device=dist.device), op=torch_dist.ReduceOp.MAX)
        hessians = sums.result(total_batches)
        summary = {
            "source": calib.source,
            "batches": total_batches,
            "batches_per_rank": calib.calibration_batches if calib.source == "data" else None,
            "world": dist.world,
            "tokens": total_batches * batch_seqs * seq_tokens,
            "seq_len": calib.seq_len,
            "batch_seqs": batch_seqs,
            "seconds": float(loop_seconds.item()),
            "matrices": len(hessians) - 1,
            "files_per_rank": len(files),
        }
        if dist.is_main:
            with atomic_path(out) as tmp:
                torch.save(hessians, tmp)
            write_json(Path(out).with_suffix(".json"), summary)
            log.write({"event": "done", **summary})
        dist.barrier()
    finally:
        pgdist.shutdown()


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
