"""Start a distributed stage with torchrun: one node (standalone) or, inside a multi-node SLURM job, one
torchrun per node meeting at the first node.

    python -m pgolf.launch --gpus 8 --cpu-procs 1 -- -m pgolf.train --config ... --out-dir ...

`--gpus 0` starts `--cpu-procs` gloo ranks on the CPU. In a SLURM allocation of several nodes (the
slurm-multinode profile) the first call re-runs itself under `srun` with one task per node; each task then
starts torchrun with a c10d rendezvous at the first host of the allocation. The ranks of a stage given
`--compile-cache DIR` keep Python's bytecode there where the installed bytecode cannot serve (pgolf.bytecode).

Stopping: torchrun runs in its own session, so a terminal's Ctrl-C reaches only this launcher, which passes
SIGINT (or SIGTERM, as Snakemake and SLURM send) on to the ranks themselves: training stops at the end of its
step on every rank, checkpoints and says which step the next run resumes from; the launcher exits 130. A
second signal (a second later or more: one request may arrive twice, from a job's shell and from its process
group) stops torchrun's whole process group at once. Should the launcher itself die, even by SIGKILL, torchrun
gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and stops its ranks in turn. Should torchrun die first (SIGKILL, the
OOM killer), the processes it leaves become the launcher's children (PR_SET_CHILD_SUBREAPER), and the launcher
kills them once torchrun is gone.
"""

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import bytecode
from .cli import LAUNCHED_ENV, doc_summary

RENDEZVOUS_PORT = 29500


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list, expanded by scontrol (which knows every bracket form)."""
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return hosts.stdout.split()[0]


def command(gpus: int, cpu_procs: int, stage_args: list[str], env=os.environ) -> list[str]:
    """The command this process should exec, given the environment it runs in."""
    ranks = gpus if gpus > 0 else cpu_procs
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}"]
    nodes = int(env.get("SLURM_NNODES", "1"))
    if nodes <= 1:
        return [*torchrun, "--standalone", *stage_args]
    if "SLURM_PROCID" not in env:
        # The batch script itself: fan out to one task per node, each re-entering this launcher.
        return [
            "srun",
            f"--ntasks={nodes}",
            "--ntasks-per-node=1",
            sys.executable,
            "-m",
            "pgolf.launch",
            f"--gpus={gpus}",
            f"--cpu-procs={cpu_procs}",
            "--",
            *stage_args,
        ]
    return [
        *torchrun,
        f"--nnodes={nodes}",
        f"--node-rank={env['SLURM_NODEID']}",
        "--rdzv-backend=c10d",
        f"--rdzv-id={env['SLURM_JOB_ID']}",
        f"--rdzv-endpoint={first_host(env['SLURM_JOB_NODELIST'])}:{RENDEZVOUS_PORT}",
        *stage_args,
    ]


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (torchrun's ranks), read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
REPEAT_SECONDS = 1.0  # a second signal sooner than this is the first one arriving by another path
LIBC = ctypes.CDLL(None, use_errno=True)


def dying_with_this_process(signum=signal.SIGTERM):
    """A preexec_fn for a child: it gets `signum` once this process dies (Linux PR_SET_PDEATHSIG), even by SIGKILL,
    so that no torchrun outlives its launcher. Should this process die before prctl took effect, the child
    signals itself."""
    parent = os.getpid()

    def preexec():
        if LIBC.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)

    return preexec


def kill_rank(pid: int):
    """SIGKILL a rank and its process group (torchrun starts each rank in a session of its own)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_now(torchrun: int):
    """SIGKILL torchrun's ranks and torchrun's process group."""
    for pid in children(torchrun):
        kill_rank(pid)
    os.killpg(torchrun, signal.SIGKILL)


def stage_env(stage_args: list[str], env=os.environ) -> dict:
    """The ranks' environment: marked as launched, and for a stage with `--compile-cache DIR` Python's bytecode kept
    there from the first import on, where the installed bytecode cannot serve (pgolf.bytecode)."""
    env = {**env, LAUNCHED_ENV: "1"}
    if "--compile-cache" in stage_args[:-1]:
        env = bytecode.child_env(Path(stage_args[stage_args.index("--compile-cache") + 1]), env)
    return env


def run_forwarding_signals(cmd: list[str], env: dict) -> int:
    """Run torchrun in its own session; SIGINT/SIGTERM here become SIGINT to each rank (once they exist)."""
    # ranks that outlive torchrun (killed by SIGKILL or the OOM killer) become this process's children, not init's
    LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=dying_with_this_process(), env=env)
    signals = []

    def note(signum, frame):
        now = time.monotonic()
        if signals and now - signals[0] >= REPEAT_SECONDS:  # asked twice: stop everything now
            kill_now(proc.pid)
        signals.append(now)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, note)
    forwarded = set()
    while proc.poll() is None:
        if signals:
            for pid in set(children(proc.pid)) - forwarded:
                try:
                    os.kill(pid, signal.SIGINT)
                except ProcessLookupError:
                    continue
                forwarded.add(pid)
        time.sleep(0.1)
    for pid in children(os.getpid()):  # torchrun is gone: whatever is left of its ranks would run on unwatched
        kill_rank(pid)
    return 130 if signals else proc.returncode


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.launch", description=doc_summary(__doc__))
    parser.add_argument("--gpus", type=int, required=True, help="GPUs per node (hardware.gpus); 0 = CPU")
    parser.add_argument("--cpu-procs", type=int, default=1, help="gloo ranks when --gpus is 0")
    parser.add_argument("stage_args", nargs=argparse.REMAINDER, help="after --: the stage, e.g. -m pgolf.train ...")
    args = parser.parse_args(argv)
    stage_args = args.stage_args[1:] if args.stage_args[:1] == ["--"] else args.stage_args
    cmd = command(args.gpus, args.cpu_procs, stage_args)
    if cmd[0] == "srun":  # srun passes a signal on to every node's launcher
        os.execvp(cmd[0], cmd)
    sys.exit(run_forwarding_signals(cmd, stage_env(stage_args)))


if __name__ == "__main__":
    main()
