import os
import signal
import subprocess
import sys
import time

from pgolf import launch

from conftest import ROOT

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


def test_tee_copies_output_to_the_log_and_keeps_the_exit_status(tmp_path):
    log = tmp_path / "stage.log"
    script = "import sys; print('step 1', flush=True); print('bad', file=sys.stderr); sys.exit(3)"
    cmd = [sys.executable, "-m", "pgolf.tee", str(log), "--", sys.executable, "-c", script]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 3 and proc.stdout == "step 1\nbad\n" == log.read_text()


def test_tee_passes_sigterm_on_and_reports_the_signal(tmp_path):
    """SIGTERM to pgolf.tee reaches the command (in a process group of its own, so only through pgolf.tee)."""
    log = tmp_path / "stage.log"
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), sys.exit(7)))\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    cmd = [sys.executable, "-m", "pgolf.tee", str(log), "--", sys.executable, "-c", script]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.communicate(timeout=30)[0] == "got SIGTERM\n" and proc.returncode == 7
    assert log.read_text() == "ready\ngot SIGTERM\n"


def test_ranks_left_by_a_killed_torchrun_die_with_it(tmp_path):
    """A stand-in torchrun starts a rank in a session of its own (as torchrun does), then dies by SIGKILL: the
    launcher, their subreaper, kills the orphaned rank instead of leaving it to run on."""
    pid_file = tmp_path / "rank.pid"
    torchrun = (
        "import os, signal, subprocess, sys, time\n"
        "rank = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(rank.pid))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    launcher = (
        "import os, sys\nfrom pgolf import launch\n"
        f"sys.exit(launch.run_forwarding_signals([sys.executable, '-c', {torchrun!r}], dict(os.environ)))\n"
    )
    done = subprocess.run([sys.executable, "-c", launcher], cwd=ROOT, timeout=60)
    assert done.returncode == -signal.SIGKILL % 256  # torchrun's status (-9), passed on through sys.exit
    rank = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{rank}") and time.monotonic() < deadline:  # reaped by init once killed
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{rank}")
