"""A stage's `--config` and the config dataclasses built from it: what every stage (and train_gpt.py) reads.

The JSON comes from the rules' `params:` (a file each) or from `python -m pgolf.config resolve`; resolving and
validating it (YAML, schemas) stays in pgolf.config, which the submission script does not carry.
"""

import dataclasses
import json
from pathlib import Path

from .errors import PgolfError


def load_stage_config(arg: str) -> dict:
    """A stage's `--config`: inline JSON or the path of a JSON file (the rules pass one named by its content)."""
    text = arg.strip()
    if not text.startswith("{"):
        path = Path(arg)
        if not path.exists():
            raise PgolfError(f"{arg}: config not found; write one with `python -m pgolf.config resolve`")
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PgolfError(f"--config: not valid JSON ({e}); pass a file from `pgolf.config resolve`") from None


def from_dict(cls, values: dict | None, where: str):
    """Build a config dataclass from a mapping; unknown keys are an error naming the section."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise PgolfError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    return cls(**values)
