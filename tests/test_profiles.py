"""Every profile plans the DAG, and the SLURM plugin's own submit path asks for the right GPUs (no scheduler)."""

import os
import subprocess
import sys
import time

import pytest
from test_workflow import planned_jobs

from conftest import copy_workflow, snakemake

DATA = "resources/data/caseops-sp8192"


@pytest.mark.parametrize(
    "profile,extra",
    [
        ("default", []),
        ("local-8gpu", []),
        ("local-1gpu", ["--configfile", "recipes/bench-1gpu.yaml"]),
        ("slurm", []),
        ("slurm-multinode", []),
    ],
)
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
    (bin_dir / "sacctmgr").write_text("#!/bin/sh\necho acct\n")  # the account fill_placeholders writes
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "$@" >> "$SBATCH_LOG"\necho 4242\n')
    for path in bin_dir.iterdir():
        path.chmod(0o755)


def fill_placeholders(workdir, profile):
    """The profile as a user fills it in: account and partitions instead of the CHANGE_ME placeholders."""
    config = workdir / "profiles" / profile / "config.yaml"
    text = config.read_text().replace("CHANGE_ME_GPU", "gpu").replace("CHANGE_ME_CPU", "cpu")
    config.write_text(text.replace("CHANGE_ME", "acct"))
    return workdir


def submitted_train_calls(workdir, profile, timeout=120, extra=()):
    """The sbatch calls Snakemake's SLURM executor makes for the train jobs (data outputs marked up to date);
    `extra` adds command-line options (the tests fill the profile's CHANGE_ME placeholders there)."""
    for name in ("manifest.json", "tokenizer.model", "data_audit.json"):
        (workdir / DATA).mkdir(parents=True, exist_ok=True)
        (workdir / DATA / name).touch()
    snakemake(workdir, "--touch", f"{DATA}/data_audit.json")
    fake_slurm(workdir / "bin")
    log = workdir / "sbatch.log"
    env = {**os.environ, "PATH": f"{workdir / 'bin'}:{os.environ['PATH']}", "SBATCH_LOG": str(log)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--nolock",
            "--workflow-profile",
            f"profiles/{profile}",
            "--until",
            "train",
            *extra,
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and (not log.exists() or log.read_text().count("rule_train") < 3):
            time.sleep(1)
    finally:
        proc.kill()
        proc.wait()
    return [line for line in log.read_text().splitlines() if "rule_train" in line]


def test_slurm_train_job_asks_for_8_gpus_on_one_node(tmp_path):
    calls = submitted_train_calls(fill_placeholders(copy_workflow(tmp_path), "slurm"), "slurm")
    assert len(calls) == 3  # one per seed of the record recipe
    for call in calls:
        flags = call.split(" --wrap")[0].split()
        assert "--gpus=8" in flags and "--nodes=1" in flags and "--requeue" in flags
        assert "--cpus-per-gpu=8" in flags  # 64 CPUs for 8 GPUs, not the default's --cpus-per-task=8
        assert not any(f.startswith("--cpus-per-task") for f in flags)
        assert "-A acct -p gpu " in call  # the filled account and GPU partition
        assert not any(f.startswith("--ntasks-per-gpu") for f in flags)  # torchrun starts the ranks itself


def test_slurm_gpu_request_follows_hardware_gpus(tmp_path):
    workdir = fill_placeholders(copy_workflow(tmp_path), "slurm")
    (workdir / "four.yaml").write_text("hardware:\n  gpus: 4\n")
    calls = submitted_train_calls(workdir, "slurm", extra=["--configfile", "four.yaml"])
    flags = calls[0].split(" --wrap")[0].split()
    assert "--gpus=4" in flags and "--cpus-per-gpu=8" in flags and "--gpus=8" not in flags


def test_slurm_refuses_to_submit_with_placeholders(tmp_path):
    workdir = copy_workflow(tmp_path)
    fake_slurm(workdir / "bin")
    env = {**os.environ, "PATH": f"{workdir / 'bin'}:{os.environ['PATH']}", "SBATCH_LOG": str(workdir / "sbatch.log")}
    cmd = [sys.executable, "-m", "snakemake", "--nolock", "--workflow-profile", "profiles/slurm"]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "the profile still has placeholders: default-resources.slurm_account=CHANGE_ME" in proc.stderr
    assert "set-resources.train.slurm_partition=CHANGE_ME_GPU" in proc.stderr
    assert not (workdir / "sbatch.log").exists()  # nothing submitted
    dry = subprocess.run([*cmd, "-n"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "a real run refuses to submit" in dry.stderr  # plans, with a warning


@pytest.mark.parametrize("gpus", [8, 4])
def test_slurm_multinode_train_job_asks_for_nodes_with_hardware_gpus_each(tmp_path, gpus):
    """Per node, the GPUs hardware.gpus names (the ranks each node's torchrun starts), as --gres: --gpus would
    count the whole job's."""
    workdir = fill_placeholders(copy_workflow(tmp_path), "slurm-multinode")
    (workdir / "gpus.yaml").write_text(f"hardware:\n  gpus: {gpus}\n")
    calls = submitted_train_calls(workdir, "slurm-multinode", extra=["--configfile", "gpus.yaml"])
    flags = calls[0].split(" --wrap")[0].split()
    assert "--nodes=2" in flags and "--ntasks=2" in flags and f"--gres=gpu:{gpus}" in flags
    assert [f for f in flags if f.startswith("--gres")] == [f"--gres=gpu:{gpus}"]
    assert "--ntasks-per-node=1" in flags and not any(f.startswith("--gpus=") for f in flags)
