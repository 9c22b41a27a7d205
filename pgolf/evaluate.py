"""The eval_prequant and evaluate stages: diagnostic bits per byte and the timed phased score-first TTT eval.

    python -m pgolf.evaluate prequant --config CFG --model results/<name>/seed<S>/train/model.pt \\
        --manifest resources/data/<ds>/manifest.json --out results/<name>/seed<S>/train/prequant.json
    python -m pgolf.evaluate artifact --config CFG --pgrp .../quant/<p>/model.pgrp --pack-json .../pack.json \\
        --size .../size.json --prequant .../train/prequant.json --manifest resources/data/<ds>/manifest.json \\
        --out .../quant/<p>/eval.json

Several ranks: `python -m pgolf.launch --gpus N -- -m pgolf.evaluate ...`. CFG (a resolved config, JSON text or
path) holds the sections eval and hardware. `artifact` checks the blob against pack.json, unpacks and
dequantizes it, warms up compilation on random tokens (GPU), scores the quantized model, then runs the timed
evaluation (n-gram hints when the tilt is on, then phased TTT; or, with eval.ttt.mode sgd, pgolf.sgd_ttt's full-weight
SGD TTT over sliding windows) and writes eval.json (docs/contracts.md).
"""

import argparse
import dataclasses
import time

import numpy as np
import torch

from . import compile_cache
from . import dist as pgdist
from .bpb import ValData, batch_seqs, diagnostic_eval, load_val
from .cli import doc_summary
from .dist import sync
from .errors import PgolfError
from .io import read_json, write_json
from .model import GPT, ModelConfig, load_trained
from .runlog import RunLog
from .stageconfig import from_dict, load_stage_config
from .ttt import PhasedTTT, TTTConfig

# Targets of the challenge's val set under #1855's tail rule (its log's `val_tokens: 47851520`), the projection's
# scale; #2140's untruncated stream has 47,853,343, a difference the projection need not tell apart.
FINEWEB_VAL_TARGETS = 47_851_520
TTT_MODES = ("lora", "sgd")


@dataclasses.dataclass
class TiltConfig:
    """`eval.tilt`: the record-lineage values of #2018/#2130/#2135 (TOKEN_ORDER, TOKEN_THRESHOLD, TOKEN_BOOST)."""

    enabled: bool = False
    order: int = 16
    threshold: float = 0.8
    boost: float = 2.625
    probe_cuts: int = 3  # random cut positions recomputed by the causality probe


@dataclasses.dataclass
class EvalConfig:
    """`eval`: the diagnostic windows, the val subset, and the TTT and tilt subsections (record values)."""

    seq_len: int = 2048  # EVAL_SEQ_LEN of the diagnostic windows
    batch_tokens: int = 524288  # VAL_BATCH_TOKENS over all ranks
    sliding_stride: int | None = None  # None: non-overlapping windows; e.g. 64 for the older sliding eval
    truncate_tail: bool = True  # cut the val stream to floor((N-1)/seq_len)*seq_len + 1 tokens (#1855, #2123)
    val_docs_limit: int | None = None  # score only the first documents (smoke and bench runs); None = all
    artifact: str | None = None  # a .pgrp made elsewhere: the DAG sizes and scores it instead of training
    compile: bool = True  # torch.compile the TTT chunk step on GPU (warm-up outside the timer)
    ttt: TTTConfig = dataclasses.field(default_factory=TTTConfig)
    tilt: TiltConfig = dataclasses.field(default_factory=TiltConfig)

    @classmethod
    def parse(cls, section: dict | None) -> "EvalConfig":
        section = dict(section or {})
        ttt = from_dict(TTTConfig, section.pop("ttt", None), "config eval.ttt")
        tilt = from_dict(TiltConfig, section.pop("tilt", None), "config eval.tilt")
        cfg = from_dict(cls, section, "config eval")
        cfg.ttt, cfg.tilt = ttt, tilt
        cfg.check()
        return cfg

    def check(self):
        """Run where the DAG builds the config; left out of the script (pgolf.model.ModelConfig.check says why)."""
        ttt, tilt = self.ttt, self.tilt
        if tilt.enabled and not ttt.enabled:
            raise PgolfError("config eval.tilt.enabled: the tilt applies inside the TTT eval; enable eval.ttt too")
        if ttt.mode not in TTT_MODES:
            raise PgolfError(f"config eval.ttt.mode: {ttt.mode!r} is not one of {TTT_MODES}; fix it in your config")
        if tilt.enabled and ttt.mode == "sgd":
            raise PgolfError("config eval.tilt.enabled: the tilt runs inside the LoRA TTT only; set eval.ttt.mode lora")


def load_artifact(pgrp, pack_json) -> GPT:
    """Check the blob's sha256 against pack.json, unpack, dequantize and build the model."""
    from .pack import unpack_artifact, verify
    from .quant import dequantize_state

    quantized = unpack_artifact(verify(pgrp, pack_json), source=str(pgrp))
    config = ModelConfig.from_dict(quantized["config"], f"{pgrp}: model config")
    return GPT.from_unbanked(config, dequantize_state(quantized))


def prepare(model: GPT, dist) -> GPT:
    """The model on its device, eval mode, looping on, frozen."""
    model = model.to(dist.device).eval()
    model.looping = True
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def score(model, val: ValData, cfg: EvalConfig, dist) -> dict:
    """The diagnostic eval (eager: it is outside the timer and takes seconds, less than compiling it would)."""
    result = diagnostic_eval(
        model, val, cfg.seq_len, batch_seqs(cfg.batch_tokens, cfg.seq_len, dist.world), dist, cfg.sliding_stride
    )
    if result["scored"] != val.targets:
        raise PgolfError(
            f"diagnostic eval scored {result['scored']} of {val.targets} val targets; this is a bug in "
            "pgolf.bpb (every target must be scored exactly once), report it"
        )
    return result


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def load_eval_val(manifest, cfg: EvalConfig) -> ValData:
    """The val stream this run scores: its document limit, then its tail rule (`eval.truncate_tail`)."""
    return load_val(manifest, cfg.val_docs_limit, cfg.seq_len if cfg.truncate_tail else None)


def check_coverage(coverage: torch.Tensor, val: ValData) -> int:
    """Every target (stream positions 1..N-1) scored exactly once and position 0 never: returns the scored count
    or fails."""
    coverage = coverage.cpu().numpy()
    wrong = int(np.count_nonzero(coverage[1:] != 1)) + int(coverage[0] != 0)
    if wrong:
        raise PgolfError(
            f"TTT eval scored {wrong} positions not exactly once ({val.targets} targets); this is a bug in "
            "pgolf.ttt, report it"
        )
    return int(coverage.sum())


def prequant(config: dict, model_path, manifest, out):
    """Score the trained model on the val split (eval.json's `prequant`); `config` holds eval and hardware.

    evaluate.prequant(config, "results/<name>/seed1/train/model.pt", "resources/data/<ds>/manifest.json",
                      "results/<name>/seed1/train/prequant.json")
    """
    _write("prequant", _prequant, config, out, model_path, manifest)


def artifact(config: dict, pgrp, pack_json, size, manifest, out, prequant_json=None, cache_dir=None):
    """Score a packed artifact and run the timed TTT eval into eval.json; prequant_json is None for eval.artifact.

    evaluate.artifact(config, ".../quant/record/model.pgrp", ".../quant/record/pack.json",
                      ".../quant/record/size.json", "resources/data/<ds>/manifest.json", ".../quant/record/eval.json",
                      "results/<name>/seed1/train/prequant.json", "results/<name>/compile_cache")
    """
    compile_cache.use(cache_dir)  # only the TTT chunk step compiles
    _write("artifact", _artifact, config, out, pgrp, pack_json, size, manifest, prequant_json)


def _write(command: str, evaluation, config: dict, out, *inputs):
    """Run `evaluation(config, dist, log, *inputs)` on every rank; rank 0 writes its result to `out`."""
    dist = pgdist.init(config.get("hardware", {}).get("gpus", 0))
    try:
        log = RunLog(f"evaluate {command}", config, echo=dist.is_main)
        result = evaluation(config, dist, log, *inputs)
        if dist.is_main:
            write_json(out, result)
            log.write({"event": "done", "out": out})
    finally:
        pgdist.shutdown()


def _prequant(config, dist, log, model_path, manifest):
    cfg = EvalConfig.parse(config.get("eval"))
    t0 = time.perf_counter()
    model = prepare(load_trained(model_path)[0], dist)
    val = load_eval_val(manifest, cfg)
    t1 = time.perf_counter()
    result = score(model, val, cfg, dist)
    sync(dist.device)
    seconds = {"load": t1 - t0, "eval": time.perf_counter() - t1}
    out = {**result, "targets": val.targets, "val_docs": val.docs, "world": dist.world, "seconds": seconds}
    log.write({"event": "prequant", **out})
    return out


def projected_8gpu(seconds: float, scored: int, dist) -> float:
    """The timed eval scaled to the challenge's full val set on 8 GPUs of this kind (linear in targets)."""
    return seconds * dist.world / 8 * FINEWEB_VAL_TARGETS / scored


def _artifact(config, dist, log, pgrp, pack_json, size_json, manifest, prequant_json):
    cfg = EvalConfig.parse(config.get("eval"))
    prequant = read_json(prequant_json) if prequant_json else None  # none for an artifact made elsewhere
    size = read_json(size_json)
    seconds = {}
    t0 = time.perf_counter()
    model = prepare(load_artifact(pgrp, pack_json), dist)
    val = load_eval_val(manifest, cfg)
    ttt = None
    if cfg.ttt.enabled and cfg.ttt.mode == "sgd":
        from .sgd_ttt import SGDTTT  # shipped only in scripts whose config runs it (pgolf.codepack.OPTIONAL)

        ttt = SGDTTT(model, val, cfg.ttt, cfg.seq_len, cfg.sliding_stride, cfg.truncate_tail, dist, compile=cfg.compile)
    elif cfg.ttt.enabled:
        ttt = PhasedTTT(model, val, cfg.ttt, dist, compile=cfg.compile)
    seconds["load"] = time.perf_counter() - t0
    if ttt is not None and ttt.compiled:
        t0 = time.perf_counter()
        ttt.warmup()
        seconds["warmup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    quantized = score(model, val, cfg, dist)
    sync(dist.device)
    seconds["quantized_eval"] = time.perf_counter() - t0
    log.write({"event": "quantized", **quantized})

    out = {
        "prequant": {k: prequant[k] for k in ("val_loss", "val_bpb")} if prequant else None,
        "quantized": {k: quantized[k] for k in ("val_loss", "val_bpb")},
        "targets": val.targets,
        "bytes": int(val.position_bytes[1:].sum()),
        "val_docs": val.docs,
        "world": dist.world,
        "device": str(torch.cuda.get_device_name(dist.device)) if dist.device.type == "cuda" else "cpu",
        "artifact_bytes": size.get("total_bytes"),
        "tilt": {"enabled": cfg.tilt.enabled, "gated_share": 0.0},
        "probes": {"tilt_causal": "off"},
    }
    hints = None
    if ttt is None:
        out.update(ttt=None, final_bpb=quantized["val_bpb"], scored=quantized["scored"], seconds=seconds)
        out["probes"]["score_first"] = "off (eval.ttt.enabled is false)"
        out["projected_8gpu_seconds"] = projected_8gpu(seconds["quantized_eval"], quantized["scored"], dist)
        return out
    dist.barrier()
    sync(dist.device)
    graphs = compiled_graphs()
    timer = time.perf_counter()  # the eval timer: hints and TTT
    if cfg.ttt.mode == "sgd":
        return out | ttt.eval_outputs(ttt.run(), seconds, timer, graphs, log)
    if cfg.tilt.enabled:
        from . import ngram  # shipped only in scripts whose config runs it (pgolf.codepack.OPTIONAL)

        hints = ngram.hints(val.tokens, cfg.tilt.order, cfg.tilt.threshold)
        seconds["hints"] = time.perf_counter() - timer
    result = ttt.run(hints, cfg.tilt.boost)
    sync(dist.device)
    seconds["eval_timer"] = time.perf_counter() - timer
    seconds.update(result.seconds)
    scored = check_coverage(result.coverage, val)
    out.update(
        ttt={k: result.totals[k] for k in ("val_loss", "val_bpb")},
        final_bpb=result.totals["val_bpb"],
        scored=scored,
        seconds=seconds,
        projected_8gpu_seconds=projected_8gpu(seconds["eval_timer"], scored, dist),
        graphs_compiled_in_timer=compiled_graphs() - graphs,  # 0 when the warm-up covered every shape
        ttt_phases=result.phases,
    )
    out["probes"]["score_first"] = result.probe
    log.write({"event": "ttt", **{k: out[k] for k in ("ttt", "final_bpb", "scored", "seconds")}})
    if cfg.tilt.enabled:
        from . import ngram

        ngram.tilt_outputs(out, result, cfg.tilt, scored, val.tokens, hints, dist.is_main)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.evaluate", description=doc_summary(__doc__))
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("prequant", help="diagnostic score of the trained (unquantized) model")
    pre.add_argument("--model", required=True, help="results/<name>/seed<S>/train/model.pt")
    art = sub.add_parser("artifact", help="quantized diagnostic score and the timed TTT eval of a packed artifact")
    art.add_argument("--pgrp", required=True, help="results/<name>/seed<S>/quant/<preset>/model.pgrp")
    art.add_argument("--pack-json", required=True, help="its pack.json (sha256 checked before unpacking)")
    art.add_argument("--size", required=True, help="its size.json")
    art.add_argument("--prequant", help="results/<name>/seed<S>/train/prequant.json (omitted for eval.artifact)")
    for p in (pre, art):
        p.add_argument("--config", required=True, help="JSON text or path with the eval and hardware sections")
        p.add_argument("--manifest", required=True, help="resources/data/<ds>/manifest.json")
        p.add_argument("--out", required=True, help="the JSON to write")
    compile_cache.add_argument(art)
    args = parser.parse_args(argv)
    config = load_stage_config(args.config)
    if args.command == "prequant":
        prequant(config, args.model, args.manifest, args.out)
    else:
        artifact(
            config, args.pgrp, args.pack_json, args.size, args.manifest, args.out, args.prequant, args.compile_cache
        )


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
