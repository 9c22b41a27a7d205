"""Run logs that embed the config and the code version (like modded-nanogpt's logs embed their source)."""

import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def source_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def code_version() -> dict:
    """sha256 over the package sources (always available, also inside train_gpt.py) plus the git commit if any, and
    whether the package's files differ from that commit (uncommitted edits or new files, or a copied working tree
    whose .git lags behind it): then only sources_sha256 names the code that ran."""
    digest = hashlib.sha256()
    carried = getattr(getattr(__spec__, "loader", None), "modules", None)
    if carried is not None:  # inside train_gpt.py: no files on disk, so hash the (minified) sources it carries
        for relpath, source in sorted(carried.values()):
            digest.update(relpath.encode())
            digest.update(source.encode())
    for path in source_files():
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    version = {"sources_sha256": digest.hexdigest()[:16]}
    git = ["git", "-C", str(PACKAGE_DIR)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            version["git_commit"] = commit.stdout.strip()
            changed = subprocess.run(
                [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, timeout=10
            )
            version["git_dirty"] = changed.returncode != 0 or bool(changed.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return version


def header(stage: str, config: dict) -> dict:
    info = {
        "event": "start",
        "stage": stage,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version(),
        "python": platform.python_version(),
        "host": platform.node(),
        "argv": sys.argv,
        "config": config,
    }
    torch = sys.modules.get("torch")  # record it where the stage uses torch; never import it just for the log
    if torch is not None:
        info["torch"] = torch.__version__
    return info


class RunLog:
    """JSON lines: a header with config and code version, then one record per event; echoed to stderr."""

    def __init__(self, stage: str, config: dict, path=None, echo=True):
        self.path = Path(path) if path else None
        self.echo = echo
        self._file = None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w")
        self.write(header(stage, config))

    def write(self, record: dict):
        line = json.dumps(record, sort_keys=True, default=str)
        if self._file:
            self._file.write(line + "\n")
            self._file.flush()
        if self.echo:
            print(line, file=sys.stderr, flush=True)

    def close(self):
        if self._file:
            self._file.close()
            self._file = None
