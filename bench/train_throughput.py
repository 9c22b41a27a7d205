"""Training throughput of the record model on one GPU: the trainer of `python -m pgolf.train`, measured.

    python bench/train_throughput.py --manifest resources/data/bench-caseops/manifest.json \\
        [--steps 10] [--eager-steps 3] [--cache DIR] [--profile] [--attention auto] [--packing stream] \\
        [--flex-options JSON] [--states before_looping,looping] [--no-eager-check] [--no-restart] \\
        [--no-fa4-precompile] [--profile-restart] [--out throughput.json]

The record model (ModelConfig defaults) at the record batch (786,432 tokens through 8 accumulated micro-steps on
one GPU), every step the product's `Trainer.train_step`. In one run:
- the bf16 ceiling: median time of an 8192^3 bf16 matmul over 4 rotating random input pairs (docs/contracts.md);
- compile: wall seconds of the first step of each looping state (cold cache in --cache, emptied first) less one
  steady step;
- median ms/step, tokens/s, model TFLOP/s and MFU before and after looping, peak memory, the loss curve;
- the first steps' losses of an eager run from the same weights and data, against the compiled run's;
- restart: a new process on the same --cache, seconds from its start to the end of its first step in each state
  (where pgolf.bytecode keeps Python's bytecode in the cache, after a first one that fills it; with
  --profile-restart, then the functions of one more under cProfile with the most cumulative time);
- with --profile, the CUDA kernels that take most time in one step of the last state measured.
Model FLOPs per token = 6 x (matrix parameters applied per token, looped layers once per application, + LM head)
+ 12 x d_model x (mean attended keys per query) per layer application (docs/contracts.md). Prints a table last.
"""

import argparse
import contextlib
import io
import json
import math
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from attended_keys import mean_keys  # bench/, on the path of a script run from it

from pgolf import attention, bytecode, compile_cache
from pgolf import dist as pdist
from pgolf.loader import start_position
from pgolf.model import ModelConfig, layer_orders
from pgolf.optim import muon_momentum
from pgolf.shards import shard_paths
from pgolf.train import PACKINGS, TrainConfig, Trainer, pack

IMPORTED_AT = time.time()  # the restart probe's breakdown: process launch -> imports done
STATES = {"before_looping": False, "looping": True}
STATE_NAMES = {v: k for k, v in STATES.items()}


def bf16_ceiling(size: int, device, repeats: int = 20) -> float:
    """TFLOP/s of a bf16 size^3 matmul: median over `repeats` timed products cycling through 4 random pairs."""
    pairs = [
        (
            torch.randn(size, size, device=device, dtype=torch.bfloat16),
            torch.randn(size, size, device=device, dtype=torch.bfloat16),
        )
        for _ in range(4)
    ]
    for a, b in pairs:
        a @ b
    times = []
    for i in range(repeats):
        a, b = pairs[i % 4]
        times.append(_timed(lambda: a @ b, device))
    return 2 * size**3 / statistics.median(times) / 1e12


def _timed(fn, device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def flops_per_token(cfg: ModelConfig, looping: bool, mean_keys: float) -> float:
    """Model FLOPs per trained token (forward + backward), the docs/contracts.md definition."""
    d, kv, hidden = cfg.model_dim, cfg.kv_dim, cfg.mlp_dim
    per_layer = 2 * d * d + 2 * kv * d + 2 * hidden * d  # Q, O; K, V; MLP up, down
    enc, dec = layer_orders(cfg, looping)
    applications = len(enc) + len(dec)
    matrices = applications * per_layer + cfg.vocab_size * d
    return 6 * matrices + 12 * d * mean_keys * applications


def mean_attended_keys(rows: torch.Tensor, seq_len: int, packing: str) -> float:
    """Mean number of keys a query sees under the document-causal mask, each micro-batch cut as the trainer cuts it
    (pgolf.train.pack)."""
    return mean_keys(torch.cat([torch.diff(pack(tokens[:-1], seq_len, packing)[1]) for tokens in rows]).numpy())


def make_trainer(args, compiled: bool, out_dir: Path, dist) -> Trainer:
    model_cfg = ModelConfig.from_dict(json.loads(args.model)) if args.model else ModelConfig()
    cfg = TrainConfig(
        schedule="steps",
        steps=10**6,
        batch_tokens=args.batch_tokens,
        compile=compiled,
        compile_warmup_steps=0,
        checkpoint_minutes=0,
        packing=args.packing,
    )
    config = {"model": vars(model_cfg), "train": vars(cfg), "bench": vars(args)}
    with contextlib.redirect_stderr(io.StringIO()):  # the trainer's log header (config dump); the table says it
        trainer = Trainer(config, model_cfg, cfg, shard_paths(args.manifest, "train"), args.seed, out_dir, dist)
    trainer.model.set_attention(args.attention, compiled=trainer.compiled)
    return trainer


class Run:
    """Steps of one trainer over the loader's stream from its start, each timed with a sync."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.loader = trainer.make_loader(start_position(trainer.cfg.loader))
        self.steps = []  # {"step", "looping", "loss", "seconds"}
        self.keys = []  # mean attended keys of each batch

    def step(self, looping: bool) -> dict:
        t = self.trainer
        t.model.looping = looping
        seq_len = t.model_cfg.train_seq_len
        t.sync()
        start = time.perf_counter()
        rows = next(self.loader)
        loss, _ = t.train_step(rows, seq_len, 1.0, muon_momentum(len(self.steps), t.cfg))
        t.ema.update()
        t.sync()
        record = {
            "step": len(self.steps) + 1,
            "looping": looping,
            "loss": float(loss),
            "seconds": time.perf_counter() - start,
        }
        self.steps.append(record)
        self.keys.append(mean_attended_keys(rows, seq_len, t.cfg.packing))
        return record

    def close(self):
        self.loader.close()


def restart_probe(args, dist) -> dict:
    """The wall-clock times at which the imports end, the trainer is built and the first step of each state ends (a
    fresh process on a filled cache), and torch.compile's own timings of those steps."""
    from torch._dynamo.utils import compile_times

    with tempfile.TemporaryDirectory() as tmp:
        done = {"imported": IMPORTED_AT}
        run = Run(make_trainer(args, True, Path(tmp), dist))
        done["trainer_built"] = time.time()
        for looping in args.states:
            run.step(looping)
            done[STATE_NAMES[looping]] = time.time()
        run.close()
    return {"at": done, "compile_times": compile_times(repr="str")}


def kernel_table(run: Run, looping: bool, top: int = 30) -> list[dict]:
    """CUDA kernels by total time over one step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run.step(looping)
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    events.sort(key=lambda e: -e.device_time_total)
    return [
        {
            "kernel": e.key[:70],
            "calls": e.count,
            "ms": round(e.device_time_total / 1000, 2),
            "share": round(e.device_time_total / total, 4),
        }
        for e in events[:top]
    ]


def phase_summary(records, keys, model_cfg, batch_tokens, ceiling) -> dict:
    steady = records[1:]  # the first step of a state compiles
    seconds = statistics.median(r["seconds"] for r in steady)
    mean_keys = statistics.fmean(keys)
    flops = flops_per_token(model_cfg, records[0]["looping"], mean_keys)
    tflops = flops * batch_tokens / seconds / 1e12
    return {
        "ms_per_step": round(1000 * seconds, 1),
        "tokens_per_s": round(batch_tokens / seconds),
        "mean_attended_keys": round(mean_keys, 1),
        "model_tflops": round(tflops, 1),
        "mfu": round(tflops / ceiling, 4),
        "first_step_s": round(records[0]["seconds"], 2),
        "compile_s": round(records[0]["seconds"] - seconds, 2),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=10, help="steady steps per looping state")
    parser.add_argument("--eager-steps", type=int, default=3)
    parser.add_argument("--loss-tolerance", type=float, default=0.02, help="max |compiled - eager| first losses")
    parser.add_argument("--cache", type=Path, help="compile cache (emptied first); default: a temporary folder")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-tokens", type=int, default=TrainConfig.batch_tokens)
    parser.add_argument("--model", help="ModelConfig overrides as JSON (a variant, a CPU dry run); default: the record")
    parser.add_argument("--ceiling-size", type=int, default=8192)
    parser.add_argument("--attention", default="auto", help="attention backend (pgolf.attention.BACKENDS or auto)")
    parser.add_argument("--packing", choices=PACKINGS, default=TrainConfig.packing, help="train.packing")
    parser.add_argument(
        "--flex-options",
        type=json.loads,
        help="FlexAttention kernel_options in place of "
        "pgolf.attention.FLEX_KERNEL_OPTIONS, as JSON ({} = torch's default)",
    )
    parser.add_argument(
        "--states",
        default="before_looping,looping",
        help="looping states to measure, comma-separated (a side-by-side call measures one)",
    )
    parser.add_argument("--no-eager-check", action="store_true", help="skip the eager run's first losses")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart probe")
    parser.add_argument(
        "--no-fa4-precompile",
        action="store_true",
        help="fa4: compile its kernels on the first call, not in the background while the step compiles",
    )
    parser.add_argument("--profile-restart", action="store_true", help="then a restart probe under cProfile")
    parser.add_argument("--restart-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.states = [STATES[name] for name in args.states.split(",")]

    if args.flex_options is not None:
        attention.FLEX_KERNEL_OPTIONS = args.flex_options
    if args.no_fa4_precompile:
        from pgolf import fa4

        fa4.precompile = lambda *shapes: None
    dist = pdist.init(1 if torch.cuda.is_available() else 0)
    device = dist.device
    if args.restart_probe:
        compile_cache.use(args.cache)
        print(json.dumps(restart_probe(args, dist)))
        return
    cache = args.cache or Path(tempfile.mkdtemp(prefix="pgolf-compile-"))
    shutil.rmtree(cache, ignore_errors=True)
    compile_cache.use(cache)
    ceiling = bf16_ceiling(args.ceiling_size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "ceiling_tflops": round(ceiling, 1),
        "batch_tokens": args.batch_tokens,
        "model_overrides": json.loads(args.model) if args.model else {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="pgolf-bench-"))

    trainer = make_trainer(args, True, tmp / "compiled", dist)
    result["compiled"] = trainer.compiled
    result["attention"] = trainer.model.backend(device).name
    result["fa4_precompile"] = result["attention"] == "fa4" and not args.no_fa4_precompile
    result["flex_kernel_options"] = attention.FLEX_KERNEL_OPTIONS
    result["packing"] = args.packing
    run = Run(trainer)
    phases = {}
    for looping in args.states:
        first = len(run.steps)
        for _ in range(args.steps + 1):
            run.step(looping)
        name = "looping" if looping else "before_looping"
        phases[name] = phase_summary(run.steps[first:], run.keys[first:], trainer.model_cfg, args.batch_tokens, ceiling)
    result["phases"] = phases
    from torch._dynamo.utils import compile_times  # imported late, as the restart probe's breakdown needs

    result["compile_times"] = compile_times(repr="str")  # torch.compile's own breakdown of the cold compiles
    save(args.out, result)
    result["peak_memory_gib"] = (
        round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
    )
    if args.profile and device.type == "cuda":
        result["kernels"] = kernel_table(run, args.states[-1])
    result["losses"] = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in run.steps]
    run.close()
    del run, trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if not args.no_eager_check:
        eager_check(args, result, tmp, dist)
        save(args.out, result)
    if not args.no_restart:
        restart(args, result, cache)
    shutil.rmtree(tmp, ignore_errors=True)
    save(args.out, result)
    print_table(result)


def eager_check(args, result: dict, tmp: Path, dist):
    """The first losses of an eager run from the same weights and data, against the compiled run's."""
    eager = Run(make_trainer(args, False, tmp / "eager", dist))
    eager_losses = [eager.step(args.states[0])["loss"] for _ in range(args.eager_steps)]
    eager.close()
    del eager
    if dist.device.type == "cuda":
        torch.cuda.empty_cache()  # the restart probe's process needs the card's memory
    compiled_losses = [r["loss"] for r in result["losses"][: args.eager_steps]]
    # a NaN compares as neither larger nor smaller, so it counts as infinitely far (a NaN run once passed here)
    worst = max(abs(a - b) if math.isfinite(a - b) else math.inf for a, b in zip(compiled_losses, eager_losses))
    result["eager_check"] = {
        "compiled": compiled_losses,
        "eager": [round(x, 4) for x in eager_losses],
        "max_abs_diff": round(worst, 5),
        "tolerance": args.loss_tolerance,
        "passed": worst <= args.loss_tolerance,
    }


def restart(args, result: dict, cache: Path):
    """A fresh process on the filled compile cache: seconds from its launch to the end of each state's first step."""
    probe = [
        sys.executable,
        __file__,
        "--restart-probe",
        "--manifest",
        str(args.manifest),
        "--cache",
        str(cache),
        "--batch-tokens",
        str(args.batch_tokens),
        "--seed",
        str(args.seed),
        "--attention",
        args.attention,
        "--packing",
        args.packing,
        "--states",
        ",".join(STATE_NAMES[s] for s in args.states),
    ]
    if args.model:
        probe += ["--model", args.model]
    if args.flex_options is not None:
        probe += ["--flex-options", json.dumps(args.flex_options)]
    # as pgolf.launch starts a stage's ranks: the bytecode kept in the cache where the installed one cannot serve;
    # this process ran without that, so then a first probe compiles the sources into it, as a pipeline's first run
    env = bytecode.child_env(cache)
    filling = env.get("PYTHONPYCACHEPREFIX") != os.environ.get("PYTHONPYCACHEPREFIX")
    for name in ["restart_uncached_bytecode_s"] * filling + ["restart_s"]:
        timed = time_probe(probe, env)
        if "error" in timed:  # the figures before stand; say why this one is missing
            result["restart_error"] = timed["error"]
            return
        result[name] = timed["at"]
    result["restart_compile_times"] = timed["compile_times"]
    if args.profile_restart:  # a second probe under cProfile, whose overhead would skew the times above
        with tempfile.NamedTemporaryFile(suffix=".prof") as stats:
            profiled = [sys.executable, "-m", "cProfile", "-o", stats.name, *probe[1:]]
            done = subprocess.run(profiled, capture_output=True, env=env)
            if done.returncode == 0:
                result["restart_profile"] = top_functions(stats.name)


def time_probe(probe: list[str], env: dict) -> dict:
    """One restart probe: seconds from its launch to each point it reports, or its last error lines."""
    launched = time.time()
    done = subprocess.run(probe, capture_output=True, text=True, env=env)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-5:]}
    probed = json.loads(done.stdout.splitlines()[-1])
    return {
        "at": {k: round(t - launched, 2) for k, t in probed["at"].items()},
        "compile_times": probed["compile_times"],
    }


def top_functions(stats_path: str, top: int = 60) -> list[str]:
    """The functions of a cProfile run with the most cumulative time, one line each."""
    out = io.StringIO()
    pstats.Stats(stats_path, stream=out).sort_stats("cumulative").print_stats(top)
    return [line for line in out.getvalue().splitlines() if line.strip()][-top:]


def save(path: Path | None, result: dict):
    """Written after each part, so that a run cut short by its time limit still leaves what it measured."""
    if path:
        path.write_text(json.dumps(result, indent=1) + "\n")


def print_table(r: dict):
    print(
        f"\n{r['device']}, torch {r['torch']}, compiled: {r['compiled']}, attention {r['attention']}, packing "
        f"{r['packing']}; bf16 ceiling {r['ceiling_tflops']} TFLOP/s; batch {r['batch_tokens']:,} tokens; "
        f"peak memory {r['peak_memory_gib']} GiB"
    )
    print("| phase | ms/step | tokens/s | mean keys | model TFLOP/s | MFU | compile s | restart: first step at s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, p in r["phases"].items():
        print(
            f"| {name} | {p['ms_per_step']:,} | {p['tokens_per_s']:,} | {p['mean_attended_keys']} | "
            f"{p['model_tflops']} | {p['mfu']:.1%} | {p['compile_s']} | {r.get('restart_s', {}).get(name)} |"
        )
    e = r.get("eager_check")
    if e:
        print(
            f"eager check: compiled {e['compiled']} vs eager {e['eager']}: max |diff| {e['max_abs_diff']} "
            f"(tolerance {e['tolerance']}) -> {'pass' if e['passed'] else 'FAIL'}"
        )
    for k in r.get("kernels", []):
        print(f"  {k['share']:6.1%} {k['ms']:9.2f} ms {k['calls']:5d}x  {k['kernel']}")


if __name__ == "__main__":
    main()
