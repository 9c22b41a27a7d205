"""The submission folder's requirements.txt: derived from what train_gpt.py imports, and enough on its own."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf.errors import PgolfError
from pgolf.submission import requirements

FOLDER = "results/smoke/submission/2026-11-23_pgolf_smoke"


def test_requirements_name_every_outside_import(tmp_path):
    script = tmp_path / "train_gpt.py"
    script.write_text("import brotli as B,base64 as b\nexec(B.decompress(b.b85decode('')))\n")
    lines = requirements(script)
    specs = {line.split()[0].split(">=")[0].lower().replace("_", "-"): line.split()[0] for line in lines[:-1]}
    names = set(specs)
    # the stub's brotli and the carried modules' imports; the DAG-only ones (pgolf.codepack's minifier,
    # pgolf.download's hub client) stay out with their modules
    assert {"brotli", "torch", "numpy", "sentencepiece"} <= names
    assert not names & {"python-minifier", "huggingface-hub", "pyyaml", "jsonschema"}
    assert not names & {"pgolf", "json", "base64"}
    assert all(" # built with " in line for line in lines[:-1])
    # the minimum versions pgolf's pyproject.toml requires: pgolf.pack's bounded brotli decoding needs 1.2
    assert specs["brotli"] == "brotli>=1.2" and specs["torch"] == "torch>=2.9"

    script.write_text("import brotli\nimport no_such_module_xyz\n")
    with pytest.raises(PgolfError, match="no_such_module_xyz"):
        requirements(script)


@pytest.mark.smoke
def test_train_gpt_runs_in_a_fresh_venv_from_requirements_alone(smoke_run, tmp_path):
    """A virtual environment with torch 2.13.0 (as .ci/install) and then requirements.txt alone, no pgolf, runs the
    submission's train_gpt.py on the smoke data and scores what the DAG scored."""
    folder = smoke_run / FOLDER
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for args in (["torch==2.13.0"], ["-r", str(folder / "requirements.txt")]):
        proc = subprocess.run(pip + args, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    shutil.copytree(smoke_run / "resources", run / "resources")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    probe = subprocess.run([python, "-c", "import pgolf"], cwd=run, env=env, capture_output=True, text=True)
    assert probe.returncode != 0, "pgolf must not be importable in the fresh environment"
    proc = subprocess.run([python, str(folder / "train_gpt.py")], cwd=run, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ours = json.loads((run / "results/smoke/seed1/quant/record/eval.json").read_text())
    dag = json.loads(Path(smoke_run / "results/smoke/seed1/quant/record/eval.json").read_text())
    for key in ("prequant", "quantized", "ttt"):
        assert ours[key]["val_bpb"] == pytest.approx(dag[key]["val_bpb"], rel=2e-3), key
