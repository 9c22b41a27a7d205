"""train_gpt.py's first line: the preset and the versions behind its counted bytes, and the file's encoding.

pgolf.codepack writes it and pgolf.sizecheck reads it back. The minified text, and so the size the challenge counts,
depends on the Python and python-minifier versions; `coding: latin-1` lets the compressed code sit in the file as
one byte per byte.
"""

import re
from pathlib import Path

from .errors import PgolfError

LINE = "# pgolf {preset}: minified by Python {python} with python-minifier {minifier}; coding: latin-1"
PATTERN = re.compile(r"# pgolf (\S+): minified by Python (\S+) with python-minifier (\S+); coding: latin-1")


def read_header(path) -> dict:
    """The versions that generated a train_gpt.py, from its first line."""
    try:
        first = Path(path).read_bytes().split(b"\n", 1)[0].decode("latin-1")
    except FileNotFoundError:
        raise PgolfError(f"{path}: file not found; run the code rule first") from None
    match = PATTERN.fullmatch(first)
    if not match:
        raise PgolfError(f"{path}: not written by pgolf.codepack (no version line); re-run the code rule")
    return {"preset": match.group(1), "python": match.group(2), "python_minifier": match.group(3)}
