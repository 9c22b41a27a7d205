"""The workflow outside this development install: parsing without pgolf's heavy dependencies, and envs/pgolf.yaml
as `--sdm conda` uses it."""

import json
import os
import subprocess
import sys
import textwrap

import yaml

from conftest import ROOT, copy_workflow

# Importing any of these fails (numpy and pyarrow only when pgolf imports them: Snakemake's plugins may use them).
BLOCKER = textwrap.dedent(
    """
    import sys
    ALWAYS = {"torch", "brotli", "python_minifier", "sentencepiece", "huggingface_hub", "matplotlib"}
    FROM_PGOLF = {"numpy", "pyarrow"}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in ALWAYS:
                raise ImportError(f"{name} is blocked (tests/test_env.py)")
            if top in FROM_PGOLF:
                frame = sys._getframe(1)
                while frame and "importlib" in frame.f_code.co_filename:
                    frame = frame.f_back
                if frame and "/pgolf/" in frame.f_code.co_filename:
                    raise ImportError(f"{name} is blocked (tests/test_env.py)")
            return None

    sys.meta_path.insert(0, Blocker())
    """
)

# A stand-in for conda that answers Snakemake's checks and, for `conda env create --file F`, resolves the env
# file's pip paths as conda does (relative to F's folder) and records them in $FAKE_CONDA_LOG.
FAKE_CONDA = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    import yaml
    args = sys.argv[1:]
    if args == ["--version"]:
        print("conda 24.7.1")
    elif args[:2] == ["info", "--json"]:
        print(json.dumps({{"conda_version": "24.7.1", "platform": "linux-64", "root_prefix": "/c",
                          "conda_prefix": "/c", "active_prefix": None, "envs_dirs": []}}))
    elif args[:2] == ["config", "--get"]:
        print(json.dumps({{"get": {{"channel_priority": "strict"}}}}))
    elif args[0] == "clean":
        pass
    elif args[:2] == ["env", "create"]:
        env_file = next(a.split("=", 1)[1] if "=" in a else args[args.index(a) + 1]
                        for a in args if a.startswith("--file")).strip('"')
        pip = next(d["pip"] for d in yaml.safe_load(open(env_file))["dependencies"] if isinstance(d, dict))
        editable = [line.split(None, 1)[1] for line in pip if line.startswith("-e ")]
        folder = os.path.dirname(os.path.abspath(env_file))
        with open(os.environ["FAKE_CONDA_LOG"], "w") as log:
            json.dump({{"env_file": env_file, "editable": [os.path.normpath(os.path.join(folder, e))
                                                          for e in editable]}}, log)
    else:
        sys.exit(f"fake conda: {{args}}")
    """
)


def test_dry_run_parses_without_pgolfs_heavy_dependencies(tmp_path):
    """Snakemake plans the smoke DAG when torch, brotli, python-minifier, sentencepiece, matplotlib and (from pgolf)
    numpy cannot be imported, as in an environment with Snakemake alone."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    env = {**os.environ, "PYTHONPATH": f"{site}:{workdir}"}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert "torch is blocked" in probe.stderr  # the blocker is active
    for overlay in ([], ["--config", "eval={'artifact': 'x.pgrp'}"]):
        (workdir / "x.pgrp").write_bytes(b"")
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "recipes/smoke.yaml", *overlay],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "This was a dry-run" in proc.stdout + proc.stderr


def test_conda_env_installs_the_workflow_folder(tmp_path):
    """`--sdm conda` copies envs/pgolf.yaml into .snakemake/conda/; its `-e` line must name the workflow folder
    from there."""
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "conda").write_text(FAKE_CONDA.format(python=sys.executable))
    (bin_dir / "conda").chmod(0o755)
    log = tmp_path / "conda.json"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_CONDA_LOG": str(log),
        "PYTHONPATH": str(workdir),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--sdm",
            "conda",
            "--conda-create-envs-only",
            "--cores",
            "1",
            "--configfile",
            "recipes/smoke.yaml",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    created = json.loads(log.read_text())
    assert os.path.dirname(created["env_file"]) == str(workdir / ".snakemake" / "conda")
    assert created["editable"] == [str(workdir)]
    spec = yaml.safe_load((ROOT / "envs" / "pgolf.yaml").read_text())
    assert "lrzip =0.651" in spec["dependencies"]  # pgolf.pack shells out to it
