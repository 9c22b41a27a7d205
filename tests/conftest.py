"""Shared fixtures: the repository root, a workflow copy in a temp dir, and one session-scoped smoke run."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = ROOT / "tests" / "data"
# upstream's outputs for 322 documents (adversarial strings first) and the canonical CaseOps tokenizer, from the
# project's shared references
GOLDEN = TEST_DATA / "caseops-golden.jsonl.gz"
CANONICAL = TEST_DATA / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
WORKFLOW_FILES = ["Snakefile", "config.yaml", "rules", "workflow", "recipes", "envs", "profiles", "pgolf"]


def copy_workflow(dest: Path) -> Path:
    """A fresh copy of the workflow (and the package it calls) in which Snakemake may write freely."""
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def live_tree(pid: int) -> list[int]:
    """`pid` and its descendants that are still running, from /proc (a zombie counts as gone: in a container no
    init may reap an orphan)."""
    from pgolf.launch import children

    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            state = (Path("/proc") / str(p) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone
            continue
        if state != "Z":
            found.append(p)
        todo += children(p)
    return found


def snakemake(workdir: Path, *args, check=True):
    """Run snakemake in `workdir`; return the completed process (stdout and stderr merged)."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--nolock", *args]
    proc = subprocess.run(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed in {workdir}:\n{proc.stdout[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole smoke DAG, run once per test session; tests read its outputs and plan reruns against it."""
    workdir = copy_workflow(tmp_path_factory.mktemp("smoke"))
    snakemake(workdir, "--configfile", "recipes/smoke.yaml")
    return workdir
