"""Run a training script under torch.profiler for one of its steps, and print the CUDA kernels that took most time.

    cd bench/upstream && torchrun --standalone --nproc_per_node=1 ../profile_script.py train_gpt.py
    (bench/gpu_side_by_side.sh sets LAUNCH for run_pg.sh when PGOLF_SBS_PROFILE=1)

For upstream #1855's script, which has no profiler of its own: a training step is counted each time an optimizer
of class PROFILE_OPTIMIZER (default Muon, stepped once per step) finishes a step; the profile runs from the end of
step PROFILE_STEP - 1 to the end of step PROFILE_STEP (default 12: past the compile of the first steps). The table
goes to stdout as lines starting with "PROFILE", the form of bench/train_throughput.py --profile.
"""

import os
import runpy
import sys

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile

STEP = int(os.environ.get("PROFILE_STEP", "12"))
OPTIMIZER = os.environ.get("PROFILE_OPTIMIZER", "Muon")
TOP = 30

steps = 0
profiler = profile(activities=[ProfilerActivity.CUDA])


def on_step(optimizer, args, kwargs):
    global steps
    if type(optimizer).__name__ != OPTIMIZER:
        return
    steps += 1
    if steps == STEP - 1:
        torch.cuda.synchronize()
        profiler.start()
    elif steps == STEP:
        torch.cuda.synchronize()
        profiler.stop()
        report()


def report():
    events = [e for e in profiler.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    events.sort(key=lambda e: -e.device_time_total)
    print(f"PROFILE step {STEP}: {total / 1000:.1f} ms of CUDA kernels", flush=True)
    for e in events[:TOP]:
        print(
            f"PROFILE {e.device_time_total / total:6.1%} {e.device_time_total / 1000:9.2f} ms {e.count:5d}x  "
            f"{e.key[:90]}",
            flush=True,
        )


register_optimizer_step_post_hook(on_step)
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
