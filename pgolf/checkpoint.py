"""The training stage's resumable state: one checkpoint file in the out dir, replaced atomically.

It holds what an uninterrupted run would still have in memory (weights, EMA, optimizer states, step, elapsed
loop time, loader position, RNG states, the log so far, the world size) plus an identity (model and train config,
seed, the data manifest's sha256) that must match for a run to resume from it.
"""

from pathlib import Path

import torch

from .errors import PgolfError
from .io import atomic_path

NAME = "checkpoint.pt"


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


def save(out_dir, state: dict):
    with atomic_path(checkpoint_path(out_dir)) as tmp:
        torch.save(state, tmp)


def load(out_dir, identity: dict):
    """The saved state, or None when there is none; refuses a checkpoint of another config or seed."""
    path = checkpoint_path(out_dir)
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


def remove(out_dir):
    checkpoint_path(out_dir).unlink(missing_ok=True)
