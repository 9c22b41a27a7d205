import sys

from pgolf import launch

STAGE = ["-m", "pgolf.train", "--out-dir", "x"]


def test_single_node_is_standalone_torchrun():
    cmd = launch.command(8, 1, STAGE, env={})
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=8", "--standalone", *STAGE]


def test_cpu_uses_cpu_procs():
    assert "--nproc-per-node=2" in launch.command(0, 2, STAGE, env={})


def test_multinode_batch_script_fans_out_with_srun():
    cmd = launch.command(8, 1, STAGE, env={"SLURM_NNODES": "2"})
    assert cmd[:3] == ["srun", "--ntasks=2", "--ntasks-per-node=1"]
    assert cmd[-len(STAGE) - 1 :] == ["--", *STAGE]


def test_multinode_task_meets_at_first_host(monkeypatch):
    monkeypatch.setattr(launch, "first_host", lambda nodelist: {"gpu[07-08]": "gpu07"}[nodelist])
    env = {
        "SLURM_NNODES": "2",
        "SLURM_PROCID": "1",
        "SLURM_NODEID": "1",
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    cmd = launch.command(8, 1, STAGE, env=env)
    assert "--nnodes=2" in cmd and "--node-rank=1" in cmd and "--rdzv-id=42" in cmd
    assert "--rdzv-endpoint=gpu07:29500" in cmd and cmd[-len(STAGE) :] == STAGE
