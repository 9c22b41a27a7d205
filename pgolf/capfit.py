"""Cap-fit: the bit allocation with the lowest predicted loss increase whose exact size fits a byte target.

    python -m pgolf.capfit --config CFG --model results/<name>/seed<S>/train/model.pt \
        --hessians results/<name>/seed<S>/train/hessians.pt --out results/<name>/seed<S>/quant/capfit/preset.json

CFG is the resolved config narrowed by the capfit rule: quant.capfit, the base preset under quant.presets, and
every other section the submission script carries (its bytes count against the cap). Every candidate of
quant.capfit.space (the base preset with its class bits and clip sigmas, LQER top-k and rank and AWQ-lite
switched) is quantized (GPTQ results shared across candidates whose settings repeat), packed (compressed groups
shared likewise) and its submission script built, so its total bytes are exact; its proxy is the summed
Hessian-weighted error tr(E·H·Eᵀ) over the quantized matrices (docs/capfit.md says why that ranks allocations).
The winner, the proxy-argmin among candidates within the target, is then quantized, packed and size-checked
again from scratch; should that miss the target, the next candidate is taken and capfit.json says so.

Writes preset.json (the winner as a quant.presets entry), beside it the --config files of the preset `capfit`'s
quantize and code jobs (quantize-config.json, code-config.json, which those rules pass for it) and capfit.json
(target, every candidate with its bytes, proxy, status and why, the checked winner, seconds and cache counts).
The caches live here, not in the modules train_gpt.py carries: quantize_state and pack take a `memo` hook only.
"""

import argparse
import dataclasses
import hashlib
import itertools
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import codepack
from .cli import doc_summary, run_cli
from .config import narrow_config
from .dist import require_gpus
from .errors import PgolfError
from .io import write_json
from .model import load_trained
from .pack import pack, pack_as, sha256
from .quant import Preset, quantize_state
from .quant.state import MATRIX
from .quantize import load_hessians
from .runlog import RunLog
from .sizecheck import CAP_BYTES, size_report
from .stageconfig import from_dict, load_stage_config

PRESET = "capfit"  # the preset name the winner is built, packed and submitted under
CLASSES = ("attn", "mlp", "embed")


@dataclass
class ClassSpace:
    """The bits and SDClip sigmas tried for one class of matrices (every combination)."""

    bits: list[int]
    clip_sigmas: list[float]


@dataclass
class SearchSpace:
    attn: ClassSpace = field(default_factory=lambda: ClassSpace(bits=[5, 6, 7], clip_sigmas=[13.0]))
    mlp: ClassSpace = field(default_factory=lambda: ClassSpace(bits=[5, 6, 7], clip_sigmas=[11.5]))
    embed: ClassSpace = field(default_factory=lambda: ClassSpace(bits=[6, 7, 8], clip_sigmas=[14.0]))
    lqer_top_k: list[int] = field(default_factory=lambda: [3])
    lqer_rank: list[int] = field(default_factory=lambda: [4])
    awq: list[bool] = field(default_factory=lambda: [False])

    @classmethod
    def parse(cls, values: dict | None, where: str) -> "SearchSpace":
        values = dict(values or {})
        default = dataclasses.asdict(cls())
        for name in CLASSES:
            merged = {**default[name], **(values.get(name) or {})}
            values[name] = from_dict(ClassSpace, merged, f"{where}.{name}")
        space = from_dict(cls, {**default, **values}, where)
        for name in CLASSES:
            spec = getattr(space, name)
            if not spec.bits or not spec.clip_sigmas:
                raise PgolfError(f"{where}.{name}: bits and clip_sigmas each need at least one value")
        for name in ("lqer_top_k", "lqer_rank", "awq"):
            if not getattr(space, name):
                raise PgolfError(f"{where}.{name}: needs at least one value")
        return space


@dataclass
class CapfitConfig:
    enabled: bool = False
    base: str = "record"
    target_bytes: int | None = None
    margin_bytes: int = 10_000
    space: SearchSpace = field(default_factory=SearchSpace)

    @classmethod
    def parse(cls, values: dict | None, where: str = "quant.capfit") -> "CapfitConfig":
        values = dict(values or {})
        values["space"] = SearchSpace.parse(values.get("space"), f"{where}.space")
        config = from_dict(cls, values, where)
        if config.target > CAP_BYTES:
            raise PgolfError(f"{where}.target_bytes: {config.target:,} is above the cap of {CAP_BYTES:,}; lower it")
        return config

    @property
    def target(self) -> int:
        """The total bytes (model.pgrp + train_gpt.py) the winner must fit."""
        return CAP_BYTES - self.margin_bytes if self.target_bytes is None else self.target_bytes


def stage_config(config: dict) -> dict:
    """The capfit stage's --config from the resolved config: what the capfit preset's code job gets (the
    submission script's bytes count), plus quant.capfit and its base preset, so that editing another preset
    leaves the stage cached."""
    capfit = (config.get("quant") or {}).get("capfit") or {}
    base = capfit.get("base", CapfitConfig.base)
    presets = config["quant"]["presets"]
    narrowed = narrow_config(with_preset(config, {}), PRESET)
    narrowed["quant"] = {"capfit": capfit, "presets": {base: presets[base]} if base in presets else {}}
    return narrowed


def with_preset(config: dict, values: dict) -> dict:
    """The config with quant.presets.capfit set to `values`."""
    quant = dict(config.get("quant") or {})
    quant["presets"] = {**(quant.get("presets") or {}), PRESET: values}
    return {**config, "quant": quant}


def quantize_config(config: dict, values: dict) -> dict:
    """The capfit preset's quantize --config, as the quantize rule builds it for a preset of config.yaml."""
    return {"preset": values, "hardware": {"gpus": config["hardware"]["gpus"]}}


def code_config(config: dict, values: dict) -> dict:
    """The capfit preset's code --config, as the code rule builds it for a preset of config.yaml."""
    return narrow_config(with_preset(config, values), PRESET)


class Memo:
    """The `memo` hook of quantize_state and pack: one result per key, computed once (`key` maps the key the
    caller gives to the one stored)."""

    def __init__(self, key=lambda key: key):
        self.key, self.results = key, {}

    def __call__(self, key, compute):
        key = self.key(key)
        if key not in self.results:
            self.results[key] = compute()
        return self.results[key]

    def count(self, first=None) -> int:
        """Results computed, or those whose key starts with `first`."""
        return sum(1 for k in self.results if first is None or k[0] == first)


def group_key(key) -> tuple:
    """pack's (group, [(row, name, tensor), ...]) as the group and a digest of its members' names, dtypes, shapes
    and bytes: all its stream and row orders depend on."""
    group, members = key
    digest = hashlib.sha256()
    for _, name, t in members:
        digest.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.contiguous().numpy().tobytes())
    return group, digest.hexdigest()


def candidate_presets(base: dict, space: SearchSpace) -> list[dict]:
    """Every distinct preset of the space, as quant.presets entries (all keys spelled out), in a fixed order."""
    base = dataclasses.asdict(Preset.parse(base, "capfit base preset"))
    classes = [list(itertools.product(getattr(space, c).bits, getattr(space, c).clip_sigmas)) for c in CLASSES]
    presets, seen = [], set()
    for attn, mlp, embed, top_k, rank, awq in itertools.product(*classes, space.lqer_top_k, space.lqer_rank, space.awq):
        values = json.loads(json.dumps(base))
        for name, (bits, clip) in zip(CLASSES, (attn, mlp, embed)):
            values[name] = {"bits": bits, "clip_sigmas": float(clip)}
        values["lqer"].update(top_k=top_k, rank=rank)
        values["awq"]["enabled"] = awq
        values = dataclasses.asdict(Preset.parse(values, "capfit candidate"))
        key = json.dumps(values, sort_keys=True)
        if key not in seen:
            seen.add(key)
            presets.append(values)
    return presets


def describe(values: dict) -> dict:
    """The searched settings of a candidate preset (the rest is the base preset's)."""
    return {
        **{c: [values[c]["bits"], values[c]["clip_sigmas"]] for c in CLASSES},
        "lqer": [values["lqer"]["top_k"], values["lqer"]["rank"]] if values["lqer"]["enabled"] else None,
        "awq": values["awq"]["enabled"],
    }


class Sizer:
    """Exact submission bytes of candidate presets: model.pgrp (packed, groups shared) + train_gpt.py."""

    def __init__(self, config: dict):
        self.config = config
        self.compressor = (config.get("pack") or {}).get("compressor", "lrzip_groups")
        self.prune_target = (config.get("pack") or {}).get("prune_target_bytes")
        self.groups = Memo(group_key)

    def code_bytes(self, values: dict) -> int:
        return len(codepack.build_script(code_config(self.config, values), PRESET))

    def model_bytes(self, state: dict) -> int:
        if self.compressor == "lrzip_groups":
            return len(pack(state, self.groups))
        return len(pack_as(state, self.compressor, self.prune_target))  # one stream: nothing to share


def search(state: dict, hessians: dict, presets: list[dict], sizer: Sizer, *, model_config, device) -> tuple:
    """(candidates, cache counts): per preset its exact bytes and its proxy, in the order given."""
    memo, candidates = Memo(), []
    for i, values in enumerate(presets):
        quantized, report = quantize_state(state, hessians, values, model_config=model_config, device=device, memo=memo)
        model_bytes, code_bytes = sizer.model_bytes(quantized), sizer.code_bytes(values)
        candidates.append(
            {
                "id": i,
                "settings": describe(values),
                "preset": values,
                "model_bytes": model_bytes,
                "code_bytes": code_bytes,
                "total_bytes": model_bytes + code_bytes,
                "proxy": report["h_error"],
                "proxy_gptq": report["h_error_gptq"],
                "lqer_picks": report["lqer_picks"],
            }
        )
    matrices = sum(1 for name in state if MATRIX.match(name))
    counts = {
        "candidates": len(presets),
        "gptq_needed": matrices * len(presets),
        "gptq_run": memo.count() - memo.count("awq") - memo.count("lqer"),  # GPTQ keys start with the matrix name
        "lqer_run": memo.count("lqer"),
        "groups_compressed": sizer.groups.count(),
    }
    return candidates, counts


def check_for_real(state, hessians, values, config, *, model_config, device) -> dict:
    """Quantize, pack and size-check one preset from scratch (no cache but codepack's minified sources), as the
    quantize, pack, code and size_check rules will: size_check's own report of the written files."""
    quantized, _ = quantize_state(state, hessians, values, model_config=model_config, device=device)
    packing = config.get("pack") or {}
    blob = pack_as(quantized, packing.get("compressor", "lrzip_groups"), packing.get("prune_target_bytes"))
    script = codepack.build_script(code_config(config, values), PRESET)
    with tempfile.TemporaryDirectory(prefix="pgolf-capfit-") as tmp:
        tmp = Path(tmp)
        (tmp / "model.pgrp").write_bytes(blob)
        (tmp / "train_gpt.py").write_bytes(script)
        write_json(tmp / "pack.json", {"sha256": sha256(blob), "total_bytes": len(blob)})
        return size_report(tmp / "model.pgrp", tmp / "pack.json", tmp / "train_gpt.py")


def choose(candidates: list[dict], target: int, check) -> dict:
    """Mark every candidate and return the checked winner's size report: candidates within the target are taken
    in increasing proxy (then bytes) order and checked with `check(preset values) -> size report`; the first
    whose checked total fits wins."""
    for c in candidates:
        c.update(chosen=False, status="over_target", why=f"{c['total_bytes']:,} bytes > target {target:,}")
    fitting = sorted(
        (c for c in candidates if c["total_bytes"] <= target), key=lambda c: (c["proxy"], c["total_bytes"], c["id"])
    )
    if not fitting:
        smallest = min(candidates, key=lambda c: c["total_bytes"])
        raise PgolfError(
            f"quant.capfit: no candidate fits the target of {target:,} bytes (the smallest, {smallest['settings']}, "
            f"takes {smallest['total_bytes']:,}); add lower bits or larger clip sigmas to quant.capfit.space, or "
            "raise quant.capfit.target_bytes"
        )
    winner = report = None
    for c in fitting:
        if winner is not None:
            c.update(status="fits", why=f"proxy {c['proxy']:.6g} > winner's {winner['proxy']:.6g}")
            continue
        checked = check(c["preset"])
        c["checked_total_bytes"] = checked["total_bytes"]
        if checked["total_bytes"] <= target:
            winner = c
            c.update(chosen=True, status="winner", why="lowest proxy within the target; packed and size-checked")
            report = checked
        else:
            c.update(
                status="check_failed",
                why=(
                    f"searched {c['total_bytes']:,} bytes but packed and size-checked {checked['total_bytes']:,} "
                    f"> target {target:,}; the next candidate was taken"
                ),
            )
    if winner is None:
        raise PgolfError(
            f"quant.capfit: every candidate within the target of {target:,} bytes missed it once packed for "
            "real (see capfit.json's check_failed rows); lower quant.capfit.target_bytes or raise margin_bytes"
        )
    return report


def run(config: dict, model_path, hessians_path, device) -> tuple[dict, dict]:
    """(winner's preset values, capfit.json)."""
    quant = config.get("quant") or {}
    capfit = CapfitConfig.parse(quant.get("capfit"))
    presets = quant.get("presets") or {}
    if capfit.base not in presets:
        raise PgolfError(
            f"quant.capfit.base: {capfit.base!r} is not in quant.presets ({sorted(presets)}); name the preset "
            "whose other settings the candidates keep"
        )
    model, model_config = load_trained(model_path, "cpu")
    state, hessians = model.unbanked_state_dict(), load_hessians(hessians_path)
    candidates_in = candidate_presets(presets[capfit.base], capfit.space)
    start = time.perf_counter()
    sizer = Sizer(config)
    candidates, counts = search(state, hessians, candidates_in, sizer, model_config=model_config, device=device)
    search_seconds = time.perf_counter() - start

    def check(values):
        return check_for_real(state, hessians, values, config, model_config=model_config, device=device)

    checked = choose(candidates, capfit.target, check)
    winner = next(c for c in candidates if c["chosen"])
    result = {
        "target_bytes": capfit.target,
        "cap_bytes": CAP_BYTES,
        "margin_bytes": None if capfit.target_bytes is not None else capfit.margin_bytes,
        "base": capfit.base,
        "space": dataclasses.asdict(capfit.space),
        "proxy": "sum over quantized matrices of tr(E·H·Eᵀ), E = W − Ŵ after GPTQ and LQER (docs/capfit.md)",
        "device": str(device),
        "winner": winner["id"],
        "checked": checked,
        "seconds": {"search": search_seconds, "check": time.perf_counter() - start - search_seconds},
        "cache": counts,
        "candidates": [{k: v for k, v in c.items() if k != "preset"} for c in candidates],
    }
    return winner["preset"], result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.capfit", description=doc_summary(__doc__))
    parser.add_argument("--config", required=True, help="JSON text or path: the capfit rule's narrowed config")
    parser.add_argument("--model", required=True, help="results/<name>/seed<S>/train/model.pt")
    parser.add_argument("--hessians", required=True, help="results/<name>/seed<S>/train/hessians.pt")
    parser.add_argument("--out", required=True, help="preset.json to write; capfit.json goes beside it")
    args = parser.parse_args(argv)

    config = load_stage_config(args.config)
    gpus = config.get("hardware", {}).get("gpus", 0)
    require_gpus(gpus)
    device = torch.device("cuda" if gpus > 0 else "cpu")
    log = RunLog("capfit", config.get("quant", {}).get("capfit", {}))
    preset, result = run(config, args.model, args.hessians, device)
    out = Path(args.out)
    write_json(out.with_name("capfit.json"), result)
    write_json(out.with_name("quantize-config.json"), quantize_config(config, preset))
    write_json(out.with_name("code-config.json"), code_config(config, preset))
    write_json(out, preset)
    log.write({"event": "done", "winner": result["winner"], "seconds": result["seconds"], "cache": result["cache"]})


if __name__ == "__main__":
    run_cli(main)
