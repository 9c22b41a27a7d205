"""Atomic, durable file output: write under a temporary name, fsync it, rename it, fsync the folder; and an
exclusive lock on a folder for one writer at a time."""

import contextlib
import fcntl
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
        durable_replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(src, dst):
    """Rename src to dst so that a crash (or power loss) leaves the old file or the whole new one: the data
    reaches the disk before the rename, the folder's new entry after it."""
    _fsync(src)
    os.replace(src, dst)
    _fsync(Path(dst).parent)


def temporary_name(path) -> str:
    """The glob pattern of the temporaries atomic_path makes for `path` (in its folder)."""
    return f".{Path(path).name}.*.tmp"


def sweep_temporaries(folder, names) -> list[Path]:
    """Delete what a killed writer left of atomic_path's temporaries for these output names; call it only
    while holding the folder's lock (lock_folder), when no other writer can be mid-write."""
    stale = [p for name in names for p in Path(folder).glob(temporary_name(name))]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def lock_folder(folder, name: str, what: str):
    """Hold an exclusive fcntl lock on `folder`/`name` for this process's lifetime (the kernel drops it when the
    process dies, SIGKILL included); the file holds the pid. Another holder is one clear error naming it."""
    from .errors import PgolfError

    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held open: the lock lasts as long as the handle)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        other = handle.read().strip() or "unknown"
        handle.close()
        raise PgolfError(
            f"{folder}: another {what} (pid {other}) is running in this folder ({path} is locked); wait for it to "
            f"finish or stop it (kill {other}), then run again"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def unlock_folder(handle):
    """Remove the lock file and release the lock (a run that ends normally leaves no lock file behind)."""
    Path(handle.name).unlink(missing_ok=True)
    handle.close()


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
