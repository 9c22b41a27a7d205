"""Run logs that embed the config and the code version (like modded-nanogpt's logs embed their source)."""

import hashlib
import json
import platform
import sys
import time
from pathlib import Path


def code_version() -> dict:
    """sha256 over the sources that run: inside train_gpt.py the (minified) sources it carries, which have no files
    and no git; elsewhere the package's files, with the git commit (pgolf.package_version)."""
    carried = getattr(getattr(__spec__, "loader", None), "modules", None)
    if carried is None:
        from .package_version import package_version

        return package_version()
    digest = hashlib.sha256()
    for relpath, source in sorted(carried.values()):
        digest.update(relpath.encode())
        digest.update(source.encode())
    return {"sources_sha256": digest.hexdigest()[:16]}


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
