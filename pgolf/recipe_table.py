"""Check a recipe against the upstream run it is named after, through the recipe table (docs/recipe-table.yaml).

    python -m pgolf.recipe_table check pr2123      # every mapped hyperparameter of the run: ok / MISMATCH / ...
    python -m pgolf.recipe_table docs > docs/recipes.md

The table maps each hyperparameter an upstream run printed to the pgolf key that carries it (with a transform where
the units differ), to a behaviour pgolf fixes, or to the reason nothing carries it; docs/recipes.md describes the
format. A run's recipe is resolved as Snakemake merges it (pgolf.config.resolve), quant presets as pgolf.quant
reads them (keys a preset leaves out take the record's values).
"""

import argparse
import dataclasses
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .cli import doc_summary
from .config import load_yaml, resolve
from .errors import PgolfError

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "recipe-table.yaml"
MISSING = object()
KINDS = ("key", "fixed", "none")
RUN_FIELDS = {"configs", "dump", "comparison_bpb", "implied", "changes", "not_this_run"}


def literal(text: str):
    """A printed value as Python: True/False, int, float, else the string ('' for an empty value)."""
    text = text.strip()
    if text in ("True", "False"):
        return text == "True"
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):  # not Python's "4_6" == 46
        return float(text)
    return text


def parse_header(path) -> dict:
    """The vendored block's header facts: model_params (the run's result line) and the reported val_bpb."""
    text = Path(path).read_text()
    params = re.search(r"^#.*model_params:(\d+)", text, re.MULTILINE)
    bpb = re.search(r"^# reported val_bpb: ([0-9.]+)", text, re.MULTILINE)
    if not params or not bpb:
        raise PgolfError(f"{path}: header needs the run's `model_params:N` line and `# reported val_bpb: X`")
    return {"model_params": int(params.group(1)), "val_bpb": float(bpb.group(1))}


def comparison_bpb(table: dict, run: str) -> float:
    """What the recipe's submission.comparison_bpb must be: the run's reported val_bpb unless the table says why not."""
    override = table["runs"][run].get("comparison_bpb")
    return override["value"] if override else parse_header(ROOT / table["runs"][run]["dump"])["val_bpb"]


def parse_dump(path) -> dict:
    """{name: value} of a `Hyperparameters:` block (lines `  name: value` after the header; `#` lines skipped)."""
    path = Path(path)
    values, inside = {}, False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("#"):
            continue
        if line.strip() == "Hyperparameters:":
            inside = True
            continue
        if inside and line.startswith("  ") and ":" in line:
            name, _, value = line.strip().partition(":")
            if name in values:
                raise PgolfError(f"{path}:{number}: {name} printed twice; vendor the block exactly as the log has it")
            values[name] = literal(value)
        elif inside and line.strip():
            raise PgolfError(f"{path}:{number}: not a `  name: value` line; vendor only the Hyperparameters block")
    if not values:
        raise PgolfError(f"{path}: no `Hyperparameters:` block; vendor the run's block under docs/seed-dumps/")
    return values


# --- transforms: printed value (and the whole dump) -> the pgolf value ---------------------------------------------
def _all_docs(fraction, dump):
    """Every val document: eval.val_docs_limit null (the None this returns)."""
    if fraction != 1.0:
        raise PgolfError(f"val_doc_fraction {fraction}: pgolf limits a document count (eval.val_docs_limit)")


def _seq_schedule(text, dump):  # "1024@0.100,2048@0.700,3072@1.000" -> [[1024, 0.1], ...]
    return [[int(n), float(f)] for n, f in (item.split("@") for item in text.split(","))] if text else None


def _length_steps(text, dump):  # "256:16,2000:32" -> [[256, 16], [2000, 32]]
    return sorted([int(n), int(c)] for n, c in (item.split(":") for item in text.split(","))) if text else []


def _ttt_mask(text, dump):
    masks = {
        "": {},
        "all": {},
        "baseline_all": {},
        "no_q": {"q": False},
        "no_v": {"v": False},
        "no_qv": {"q": False, "v": False},
    }
    if text not in masks:
        raise PgolfError(f"ttt_mask {text!r}: not one of {sorted(masks)}")
    return {"q": True, "v": True, **masks[text]}


def _calibration_rows(batch_tokens, dump):
    """Upstream calibrates on training batches: batch_tokens over 8 (ranks x accumulation) per rank, in rows of
    train_seq_len."""
    return batch_tokens // 8 // dump["train_seq_len"]


def _leading_layers(count, dump):  # #1512's SWA_FULL_ATTN_LAYERS: the last `count` layers attend fully
    return list(range(dump["num_layers"] - count))


def _hub_shard_dir(path, dump):  # ./data/datasets/X -> the hub repository's datasets/datasets/X
    return "datasets/" + str(path).removeprefix("./data/")


COMPRESSORS = {"pergroup": "lrzip_groups", "brotli": "brotli_shuffle", "lzma": "lzma_pruned"}


TRANSFORMS = {
    "negate": lambda value, dump: not value,
    "all_docs": _all_docs,
    "seq_schedule": _seq_schedule,
    "length_steps": _length_steps,
    "int_list": lambda text, dump: sorted(int(x) for x in str(text).replace("-", "_").replace(",", "_").split("_")),
    "ttt_mask": _ttt_mask,
    "calibration_rows": _calibration_rows,
    "leading_layers": _leading_layers,
    "hub_shard_dir": _hub_shard_dir,
    "compressor": lambda name, dump: COMPRESSORS[name],
}


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


COMPARES = {
    "equal": lambda expected, actual: _same(expected, actual),
    "contains": lambda expected, actual: any(_same(expected, a) for a in actual),
    "truthy": lambda expected, actual: bool(expected) == bool(actual),
    "subset": lambda expected, actual: all(k in actual and _same(v, actual[k]) for k, v in expected.items()),
    "unset_or_equal": lambda expected, actual: actual is None or _same(expected, actual),
}


# --- the table ------------------------------------------------------------------------------------------------------
def load_table(path=TABLE) -> dict:
    """The table with every mapping checked for shape, so a typo fails here and not as a silent non-check."""
    table = load_yaml(path)
    for section in ("runs", "params"):
        if not isinstance(table.get(section), dict):
            raise PgolfError(f"{path}: needs a `{section}:` mapping; see docs/recipes.md for the format")
    for name, entry in table["params"].items():
        for mapping in mappings(entry):
            kinds = [k for k in KINDS if k in mapping]
            if len(kinds) != 1:
                raise PgolfError(f"{path}: params.{name} needs exactly one of key / fixed / none, got {list(mapping)}")
            if mapping.get("transform", "negate") not in TRANSFORMS or mapping.get("compare", "equal") not in COMPARES:
                raise PgolfError(
                    f"{path}: params.{name}: unknown transform or compare; known: {sorted(TRANSFORMS)}, "
                    f"{sorted(COMPARES)}"
                )
    for run, spec in table["runs"].items():
        unknown = set(spec) - RUN_FIELDS
        if unknown or not {"configs", "dump"} <= set(spec):
            raise PgolfError(f"{path}: runs.{run} needs configs and dump; unknown field(s) {sorted(unknown)}")
    return table


def mappings(entry) -> list[dict]:
    return entry if isinstance(entry, list) else [entry]


def run_values(table: dict, run: str) -> dict:
    """{name: (value, source)}: the run's printed values, what its scripts imply, then its declared changes."""
    spec = table["runs"][run]
    values = {name: (value, "printed") for name, value in parse_dump(ROOT / spec["dump"]).items()}
    for name, item in (spec.get("implied") or {}).items():
        if name in values:
            raise PgolfError(f"recipe table: runs.{run}.implied.{name} is printed in {spec['dump']}; drop it")
        values[name] = (item["value"], f"implied: {item['why']}")
    for name, item in (spec.get("changes") or {}).items():
        values[name] = (item["value"], f"change: {item['why']}")
    return values


def resolved_config(table: dict, run: str) -> dict:
    return resolve([ROOT / path for path in table["runs"][run]["configs"]])


def lookup(config: dict, key: str):
    """A dotted key of the resolved config; `{preset}` is the submitted preset, read as pgolf.quant parses it."""
    parts = key.replace("{preset}", config["submission"]["preset"]).split(".")
    if parts[:2] == ["quant", "presets"] and len(parts) > 3:
        from .quant import Preset

        presets = config["quant"]["presets"]
        if parts[2] not in presets:
            return MISSING
        node = dataclasses.asdict(Preset.parse(presets[parts[2]], where=f"quant.presets.{parts[2]}"))
        parts = parts[3:]
    else:
        node = config
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


@dataclass
class Finding:
    name: str  # upstream hyperparameter
    status: str  # ok | MISMATCH | pending | skipped | unmapped | none
    source: str  # printed / implied: why / change: why
    target: str = ""  # the pgolf key, or "fixed"
    expected: object = None
    actual: object = None


def check(table: dict, run: str, config: dict | None = None) -> list[Finding]:
    """Every hyperparameter of the run against the resolved recipe."""
    config = resolved_config(table, run) if config is None else config
    values = run_values(table, run)
    skipped = table["runs"][run].get("not_this_run") or {}
    findings = []
    for name, (value, source) in values.items():
        if name in skipped:
            findings.append(Finding(name, "skipped", source, expected=skipped[name]))
            continue
        if name not in table["params"]:
            findings.append(Finding(name, "unmapped", source))
            continue
        for m in mappings(table["params"][name]):
            if "none" in m:
                findings.append(Finding(name, "none", source, expected=m["none"]))
            elif "fixed" in m:
                ok = _same(value, m["fixed"])
                findings.append(Finding(name, "ok" if ok else "MISMATCH", source, "fixed", value, m["fixed"]))
            else:
                expected = (
                    TRANSFORMS[m["transform"]](value, {k: v for k, (v, _) in values.items()})
                    if "transform" in m
                    else value
                )
                actual = lookup(config, m["key"])
                if actual is MISSING:
                    status = "pending" if "added_by" in m else "MISMATCH"
                else:
                    status = "ok" if COMPARES[m.get("compare", "equal")](expected, actual) else "MISMATCH"
                findings.append(
                    Finding(name, status, source, m["key"], expected, None if actual is MISSING else actual)
                )
    return findings


def checked_keys(table: dict, run: str, config: dict) -> set[str]:
    """The pgolf keys (preset resolved) the run's values are checked against, plus the table's `unprinted` keys."""
    preset = config["submission"]["preset"]
    keys = {f.target for f in check(table, run, config) if f.target not in ("", "fixed")}
    keys |= set(table.get("unprinted") or {})
    return {k.replace("{preset}", preset) for k in keys}


# --- docs/recipes.md ------------------------------------------------------------------------------------------------
def _cell(value) -> str:
    return str(value).replace("|", "\\|")


def _mapping_text(m: dict) -> str:
    if "none" in m:
        return f"— ({m['none']})"
    if "fixed" in m:
        return f"fixed `{m['fixed']!r}` ({m['why']})"
    text = f"`{m['key']}`"
    if "transform" in m:
        text += f" via {m['transform']}"
    if m.get("compare", "equal") != "equal":
        text += f" ({m['compare']})"
    if "added_by" in m:
        text += f" (added by {m['added_by']})"
    return text


def render_markdown(table: dict) -> str:
    runs = list(table["runs"])
    values = {run: run_values(table, run) for run in runs}
    lines = [
        "# Recipes and the runs they rebuild",
        "",
        "Generated by `python -m pgolf.recipe_table docs > docs/recipes.md` from `docs/recipe-table.yaml`; edit the",
        "table, not this page. `tests/test_recipe_table.py` resolves each run's configs as Snakemake merges them and",
        "checks every mapped value against the run's vendored `Hyperparameters:` block (`docs/seed-dumps/`).",
        "",
        "## The table's format",
        "",
        "- `runs.<name>`: `configs` (merged left to right), `dump` (the vendored block; its header holds the",
        "  provenance, the run's `model_params:` line, which the test compares with the recipe model's",
        "  `sum(p.numel() for p in model.parameters())`, and the reported val_bpb, which the recipe's",
        "  `submission.comparison_bpb` must equal unless `comparison_bpb: {value, why}` says otherwise),",
        "  `implied` (values the block does not print but the run had, each with why),",
        "  `changes` (a run rebuilt from another run's block: what it changed) and `not_this_run` (printed values",
        "  that are not the recipe's, each with why).",
        "- `lineages`: implied values a lineage's scripts share, merged into runs with YAML's `<<`.",
        "- `params.<name>`: one mapping or a list of them: `{key: pgolf.key}` (optionally `transform`, `compare`,",
        "  `added_by`), `{fixed: value, why}` (pgolf has no key; the run must print that value) or `{none: why}`.",
        "  `{preset}` in a key is the submitted quant preset.",
        "- `unprinted`: pgolf keys a recipe may set that no block prints (every recipe value must be checked by a",
        "  mapping or listed there).",
        "",
        "To add a run: vendor its block under `docs/seed-dumps/`, add it under `runs:`, map any name the test reports",
        "as unmapped, and fix the recipe until `python -m pgolf.recipe_table check <run>` shows no MISMATCH.",
        "",
        "## Runs",
        "",
        "| run | configs | block | model_params | comparison_bpb |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        spec = table["runs"][run]
        facts = parse_header(ROOT / spec["dump"])
        lines.append(
            f"| {run} | {', '.join(spec['configs'])} | `{spec['dump']}` | {facts['model_params']:,} | "
            f"{comparison_bpb(table, run)} |"
        )
    for run in runs:
        spec = table["runs"][run]
        extra = [(n, i["value"], f"implied: {i['why']}") for n, i in (spec.get("implied") or {}).items()]
        extra += [(n, i["value"], f"change: {i['why']}") for n, i in (spec.get("changes") or {}).items()]
        extra += [
            (n, values[run].get(n, ("", ""))[0], f"not this run: {why}")
            for n, why in (spec.get("not_this_run") or {}).items()
        ]
        if extra:
            lines += ["", f"### {run}: beyond its printed block", "", "| name | value | why |", "|---|---|---|"]
            lines += [f"| {n} | `{v!r}` | {_cell(why)} |" for n, v, why in extra]
    lines += [
        "",
        "## Hyperparameters",
        "",
        "| upstream name | pgolf | " + " | ".join(runs) + " |",
        "|---|---|" + "---|" * len(runs),
    ]
    for name in sorted(table["params"]):
        cells = [_cell(" + ".join(_mapping_text(m) for m in mappings(table["params"][name])))]
        for run in runs:
            value, source = values[run].get(name, (None, None))
            cells.append("" if source is None else _cell(f"{value!r}" + ("" if source == "printed" else " *")))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "`*`: not printed by the run (implied or changed; see the run's section above).", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.recipe_table", description=doc_summary(__doc__))
    sub = parser.add_subparsers(dest="command", required=True)
    chk = sub.add_parser("check", help="a run's hyperparameters against its resolved recipe")
    chk.add_argument("run")
    chk.add_argument("--all", action="store_true", help="also list ok / none / skipped rows")
    sub.add_parser("docs", help="print docs/recipes.md")
    args = parser.parse_args(argv)
    table = load_table()
    if args.command == "docs":
        sys.stdout.write(render_markdown(table))
        return
    if args.run not in table["runs"]:
        raise PgolfError(f"recipe table: no run {args.run!r}; runs: {sorted(table['runs'])}")
    findings = check(table, args.run)
    for f in findings:
        if args.all or f.status not in ("ok", "none", "skipped"):
            print(f"{f.status:9} {f.name:34} {f.target:40} expected={f.expected!r} actual={f.actual!r}  [{f.source}]")
    bad = [f for f in findings if f.status in ("MISMATCH", "unmapped")]
    print(f"{args.run}: {len(findings)} checks, {len(bad)} mismatched or unmapped")
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
