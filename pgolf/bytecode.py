"""Python's compiled modules kept in a run's compile cache where the installed ones cannot serve.

An image whose torch was installed without bytecode, or whose bytecode is stale and cannot be rewritten (a read-only
file system, PYTHONDONTWRITEBYTECODE), makes every process compile torch's ~2,700 sources again: seconds of each
restart on the cache (bench/RESULTS.md). pgolf.launch then starts a stage's ranks with PYTHONPYCACHEPREFIX in its
compile cache, so a re-run reads the bytecode the run before wrote:

    env = bytecode.child_env(Path("results/<name>/compile_cache"))
"""

import importlib.util
import os
import sys
from pathlib import Path

FOLDER = "bytecode"  # under the compile cache


def current(source: str) -> bool:
    """Whether the bytecode Python would read beside `source` (its __pycache__ file) matches it."""
    prefix, sys.pycache_prefix = sys.pycache_prefix, None  # the installed file, not one under a prefix
    try:
        cached = importlib.util.cache_from_source(source)
    finally:
        sys.pycache_prefix = prefix
    try:
        header = Path(cached).read_bytes()[:16]
        stat = os.stat(source)
    except OSError:
        return False
    if header[:4] != importlib.util.MAGIC_NUMBER:
        return False
    if int.from_bytes(header[4:8], "little") & 1:  # hash-based (PEP 552): Python checks it, or trusts it, itself
        return True
    mtime, size = (int.from_bytes(header[i : i + 4], "little") for i in (8, 12))
    return mtime == int(stat.st_mtime) & 0xFFFFFFFF and size == stat.st_size & 0xFFFFFFFF


def child_env(cache_dir: Path, env=None) -> dict:
    """`env` (default: this process's) for a child that should keep its bytecode under `cache_dir`/bytecode: only
    where torch's installed bytecode is not current and no prefix is set already; unchanged otherwise."""
    env = dict(os.environ if env is None else env)
    torch = importlib.util.find_spec("torch")
    if env.get("PYTHONPYCACHEPREFIX") or torch is None or current(torch.origin):
        return env
    env["PYTHONPYCACHEPREFIX"] = str(Path(cache_dir).resolve() / FOLDER)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the bytecode goes to the run's cache, not the installed tree
    return env
