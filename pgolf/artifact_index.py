"""Adopt a blob made elsewhere (`eval.artifact`): it must unpack cleanly; it is copied beside a pack.json that
records its streams, size and sha256, so the size check and the evaluation read it as they read a packed model.

    python -m pgolf.artifact_index --pgrp outside.pgrp --out results/<name>/artifact/model.pgrp

A DAG-only stage: train_gpt.py packs its own model and never runs it.
"""

import argparse
from pathlib import Path

from .cli import doc_summary
from .errors import PgolfError
from .io import write_bytes, write_json
from .pack import MAGIC, artifact_streams, check_blob, sha256, unpack_artifact


def index(blob_path, out):
    """Check the blob at `blob_path` unpacks, then write it to `out` and pack.json beside it."""
    path = Path(blob_path)
    if not path.exists():
        raise PgolfError(f"{path}: artifact not found; set eval.artifact to the path of a pgolf model.pgrp")
    data = path.read_bytes()
    if data[:4] == MAGIC:
        check_blob(data, str(path))
    unpack_artifact(data, str(path))
    out = Path(out)
    write_bytes(out, data)
    write_json(
        out.with_name("pack.json"),
        {
            "streams": artifact_streams(data, str(path)),
            "total_bytes": len(data),
            "sha256": sha256(data),
            "source": str(path),
        },
    )


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.artifact_index", description=doc_summary(__doc__))
    parser.add_argument("--pgrp", required=True, help="the outside blob (eval.artifact)")
    parser.add_argument("--out", required=True, help="model.pgrp to write; pack.json goes beside it")
    args = parser.parse_args(argv)
    index(args.pgrp, args.out)


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
