"""The training stage's checkpoints, where `train.checkpoint_minutes` > 0: one file in the out dir, replaced
atomically, saved every that many minutes and when a signal or `--stop-after-step` stops the loop, resumed by the
next run (also on another world size) and deleted once model.pt is written.

It holds what an uninterrupted run would still have in memory (weights, EMA, optimizer states, step, elapsed
loop time, loader position, RNG states, the log so far, the world size) plus an identity (model and train config,
seed, the data manifest's sha256) that must match for a run to resume from it. pgolf.train imports this module
only where checkpoints are on, so a script whose config turns them off (the record's: #1855 saves none) leaves it
out (pgolf.codepack.OPTIONAL).
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch

from .errors import PgolfError
from .io import atomic_path, sweep_temporaries
from .model import config_dict

NAME = "checkpoint.pt"
# The Trainer's loop state that a checkpoint holds as it is (beside the model, EMA, optimizer and RNG states)
LOOP_STATE = "step elapsed position phase looping_from qat_from seq_len seq_changed_at records".split()
# train keys a resume may change: they do not change the trajectory
VOLATILE = ("checkpoint_minutes", "log_every", "compile", "compile_warmup_steps")


def checkpoint_path(out_dir) -> Path:
    return Path(out_dir) / NAME


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def load(path: Path, identity: dict):
    """The saved state, or None when there is none; refuses a checkpoint of another config, seed or data."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file: the fix is the same
        raise PgolfError(
            f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to train from the start"
        ) from None
    if state.get("identity") != identity:
        raise PgolfError(
            f"{path}: checkpoint of a different model/train config, seed or data manifest; delete it to train "
            "from the start"
        )
    return state


class Checkpoints:
    """A pgolf.train.Trainer's checkpoints in its out dir: every rank takes part in a save (the Muon shards are
    gathered) and in a resume; rank 0 writes and deletes the file."""

    def __init__(self, trainer):
        self.trainer, self.path = trainer, checkpoint_path(trainer.out_dir)
        train = dataclasses.asdict(trainer.cfg)
        for volatile in VOLATILE:
            train.pop(volatile)
        identity = {
            "model": config_dict(trainer.model_cfg),
            "train": train,
            "seed": trainer.seed,
            "manifest_sha256": trainer.manifest_sha256,
        }
        self.identity = json.loads(json.dumps(identity))  # as it reads back from the file (tuples as lists)

    def state_dict(self) -> dict:
        t = self.trainer
        return {
            "identity": self.identity,
            "model": {k: v.detach().cpu() for k, v in t.model.state_dict().items()},
            "ema": [s.to("cpu", copy=True) for s in t.ema.shadow],
            "optimizer": _to_cpu(t.opt.state_dict()),  # collective: every rank gathers its Muon shards
            "rng": rng_state(),
            "world_size": t.dist.world,
            "resumes": t.resumes,
            **{name: getattr(t, name) for name in LOOP_STATE},
        }

    def load_state_dict(self, state: dict):
        t = self.trainer
        t.model.load_state_dict(state["model"])
        for shadow, saved in zip(t.ema.shadow, state["ema"]):
            shadow.copy_(saved)
        t.opt.load_state_dict(state["optimizer"])  # AdamW moves its state to the parameters' device
        for name in LOOP_STATE:
            setattr(t, name, state[name])
        t.model.qat = t.qat_from is not None
        t.resumes = state.get("resumes", [])
        set_rng_state(state["rng"])

    def save(self):
        state = self.state_dict()
        if self.trainer.dist.is_main:
            with atomic_path(self.path) as tmp:
                torch.save(state, tmp)
        self.trainer.dist.barrier()

    def remove(self):
        if self.trainer.dist.is_main:
            self.path.unlink(missing_ok=True)

    def resume(self):
        """Continue from the out dir's checkpoint, if any; its log records are written again (not echoed). Rank 0
        first deletes what a killed save left of its temporary (the trainer holds the out dir's lock)."""
        t = self.trainer
        if t.dist.is_main:
            sweep_temporaries(t.out_dir, [NAME])
        resumed = load(self.path, self.identity)
        if resumed is None:
            return
        self.load_state_dict(resumed)
        if t.log:
            t.log.echo, echo = False, t.log.echo
            for record in t.records:
                t.log.write(record)
            t.log.echo = echo
        before = resumed.get("world_size", t.dist.world)
        t.resumes.append({"step": t.step, "from_world_size": before, "world_size": t.dist.world})
        t.emit(
            {
                "event": "resume",
                "step": t.step,
                "elapsed_s": t.elapsed,
                "from_world_size": before,
                "world_size": t.dist.world,
            }
        )
        if before != t.dist.world and t.dist.is_main:
            print(
                f"pgolf train: resuming a checkpoint of {before} rank(s) on {t.dist.world}: the same global "
                "batch, but reduction order differs, so the weights will not be bitwise those of either run",
                file=sys.stderr,
            )


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
