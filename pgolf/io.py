"""Atomic file output: write under a temporary name, rename only when complete."""

import contextlib
import json
import os
import tempfile
from pathlib import Path

UMASK = os.umask(0)
os.umask(UMASK)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path, data: bytes):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path):
    from .errors import PgolfError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PgolfError(f"{path}: file not found; build it first (run the stage that writes it)") from None
    except json.JSONDecodeError as e:
        raise PgolfError(f"{path}: not valid JSON ({e}); delete it and re-run the stage that writes it") from None


def load_torch(path, what: str, stage: str):
    """torch.load a stage's output on the CPU (tensors only); a missing or damaged file is one clear error."""
    import torch

    from .errors import PgolfError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PgolfError(f"{path}: file not found; run the {stage} stage first") from None
    except Exception as e:  # torch raises many types for a damaged file
        raise PgolfError(f"{path}: not a readable {what} ({e}); re-run the {stage} stage") from None
