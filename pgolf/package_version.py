"""The code version of pgolf run from its files (a checkout or an install): what pgolf.runlog.code_version records
there. train_gpt.py, whose modules have no files, hashes the sources it carries instead and leaves this module out
(pgolf.codepack.OUTSIDE_SCRIPT)."""

import hashlib
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def source_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def package_version() -> dict:
    """sha256 over the package's sources plus the git commit if any, and whether the package's files differ from that
    commit (uncommitted edits or new files, or a copied working tree whose .git lags behind it): then only
    sources_sha256 names the code that ran."""
    digest = hashlib.sha256()
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
