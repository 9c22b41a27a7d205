"""Run a stage with its output on the console and in its log, signals passed on: how the rules start long stages.

    python -m pgolf.tee logs/train/smoke/seed1.log -- python -m pgolf.launch --gpus 0 -- -m pgolf.train ...

The rule's shell `exec`s this, so a SIGTERM sent to the job's shell (Snakemake, SLURM, `kill`) lands here and
goes on to the stage, whose launcher stops every rank cleanly. The stage runs in a process group of its own: a
terminal's Ctrl-C or a group-wide signal reaches this process alone, which passes it on to that group once. The
log holds everything the stage wrote when this exits, with the stage's exit status (128 + N after a signal N).
"""

import argparse
import os
import signal
import subprocess
import sys

from .cli import doc_summary
from .launch import dying_with_this_process

CHUNK = 1 << 16


def run_teed(log_path: str, cmd: list[str]) -> int:
    """Run `cmd` with stdout and stderr copied to this process's stdout and to `log_path`; return its status."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,  # a background process group must not read the terminal
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
            preexec_fn=dying_with_this_process(),
        )

        def forward(signum, frame):  # to the stage's group, as a terminal would (tokenize's workers too)
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, forward)
        console = sys.stdout.buffer
        while chunk := os.read(proc.stdout.fileno(), CHUNK):
            log.write(chunk)
            log.flush()
            if console is not None:
                try:
                    console.write(chunk)
                    console.flush()
                except BrokenPipeError:  # the console went away: the log still gets everything
                    console = None
        status = proc.wait()
    return 128 - status if status < 0 else status


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.tee", description=doc_summary(__doc__))
    parser.add_argument("log", help="the log file (written from the start)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command, e.g. python -m pgolf.train")
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        parser.error("no command after --")
    sys.exit(run_teed(args.log, cmd))


if __name__ == "__main__":
    main()
