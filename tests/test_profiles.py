"""Every profile plans the DAG, and the SLURM plugin's own submit path asks for the right GPUs (no scheduler)."""

import os
import subprocess
import sys
import time

import pytest

from conftest import copy_workflow, snakemake
from test_workflow import planned_jobs

DATA = "resources/data/caseops-sp8192"


@pytest.mark.parametrize("profile,extra", [
    ("default", []),
    ("local-8gpu", []),
    ("local-1gpu", ["--configfile", "recipes/bench-1gpu.yaml"]),
    ("slurm", []),
    ("slurm-multinode", []),
])
def test_dry_run_under_each_profile(tmp_path, profile, extra):
    workdir = copy_workflow(tmp_path)
    (workdir / "bench/data").mkdir(parents=True)
    (workdir / "bench/data/bench-docs.parquet").touch()  # bench/prepare.sh puts the real corpus here
    (workdir / "bench/data/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model").touch()
    jobs = planned_jobs(snakemake(workdir, "-n", "--workflow-profile", f"profiles/{profile}", *extra).stdout)
    assert jobs["train"] >= 1 and jobs["evaluate"] >= 1 and jobs["submission"] == 1


def fake_slurm(bin_dir):
    """Stand-ins for the SLURM commands the plugin calls: sbatch records its arguments and answers a job id."""
    bin_dir.mkdir()
    for name in ("sacct", "squeue", "sinfo", "scontrol", "scancel", "sshare", "srun"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sacctmgr").write_text("#!/bin/sh\necho CHANGE_ME\n")
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "$@" >> "$SBATCH_LOG"\necho 4242\n')
    for path in bin_dir.iterdir():
        path.chmod(0o755)


def submitted_train_calls(workdir, profile, timeout=120):
    """The sbatch calls Snakemake's SLURM executor makes for the train jobs (data outputs marked up to date)."""
    for name in ("manifest.json", "tokenizer.model", "data_audit.json"):
        (workdir / DATA).mkdir(parents=True, exist_ok=True)
        (workdir / DATA / name).touch()
    snakemake(workdir, "--touch", f"{DATA}/data_audit.json")
    fake_slurm(workdir / "bin")
    log = workdir / "sbatch.log"
    env = {**os.environ, "PATH": f"{workdir / 'bin'}:{os.environ['PATH']}", "SBATCH_LOG": str(log)}
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--nolock", "--workflow-profile", f"profiles/{profile}",
                             "--until", "train"], cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and (not log.exists() or log.read_text().count("rule_train") < 3):
            time.sleep(1)
    finally:
        proc.kill()
        proc.wait()
    return [line for line in log.read_text().splitlines() if "rule_train" in line]


def test_slurm_train_job_asks_for_8_gpus_on_one_node(tmp_path):
    calls = submitted_train_calls(copy_workflow(tmp_path), "slurm")
    assert len(calls) == 3  # one per seed of the record recipe
    for call in calls:
        flags = call.split(" --wrap")[0].split()
        assert "--gpus=8" in flags and "--nodes=1" in flags and "--requeue" in flags
        assert not any(f.startswith("--ntasks-per-gpu") for f in flags)  # torchrun starts the ranks itself


def test_slurm_multinode_train_job_asks_for_nodes_with_8_gpus_each(tmp_path):
    calls = submitted_train_calls(copy_workflow(tmp_path), "slurm-multinode")
    flags = calls[0].split(" --wrap")[0].split()
    assert "--nodes=2" in flags and "--ntasks=2" in flags and "--gres=gpu:8" in flags
    assert "--ntasks-per-node=1" in flags and not any(f.startswith("--gpus=") for f in flags)
