"""torch.compile's on-disk caches kept next to a run's outputs (`results/<name>/compile_cache/`).

Inductor's FX-graph and AOTAutograd caches and Triton's kernels all live under TORCHINDUCTOR_CACHE_DIR, so a
re-run or a resume on the same machine skips code generation and kernel builds; only Dynamo traces again.
Stages that compile take `--compile-cache DIR` (add_argument) and call `use(DIR)` before their first compile.
"""

import os
from pathlib import Path


def add_argument(parser):
    parser.add_argument("--compile-cache", type=Path, help="keep torch.compile's caches in this folder")


def use(directory: Path | None) -> Path | None:
    """Point Inductor (and through it Triton) at `directory`; None keeps torch's default (a /tmp folder)."""
    if directory is None:
        return None
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    os.environ.pop("TRITON_CACHE_DIR", None)  # Triton then caches under <directory>/triton
    return directory
