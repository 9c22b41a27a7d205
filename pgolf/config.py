"""Resolve and validate configuration outside Snakemake, exactly as the Snakefile does.

    python -m pgolf.config resolve config.yaml recipes/smoke.yaml > resolved.json

Overlays merge over the base like Snakemake's `--configfile` (mappings merge key by key, every other value
replaces), then each schema fragment in workflow/schemas/ validates the result and fills its defaults.
Stage CLIs read such a JSON file (or the JSON text the rules pass) with pgolf.stageconfig, and need neither
Snakemake nor jsonschema.
"""

import argparse
import json
import math
import sys
from pathlib import Path

from .cli import doc_summary
from .errors import PgolfError

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "workflow" / "schemas"


def deep_merge(base: dict, overlay: dict) -> dict:
    """Snakemake's update_config: mappings merge recursively, anything else in the overlay replaces."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml(path) -> dict:
    import yaml

    path = Path(path)
    if not path.exists():
        raise PgolfError(f"{path}: config file not found; pass config.yaml or a file from recipes/")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PgolfError(f"{path}: not valid YAML ({e}); fix the syntax at the position shown") from None
    if not isinstance(data, dict):
        raise PgolfError(f"{path}: top level must be a mapping of sections (data:, train:, ...)")
    return data


def schema_fragments(schema_dir=SCHEMA_DIR) -> list[Path]:
    return sorted(Path(schema_dir).glob("*.schema.yaml"))


def sections() -> set[str]:
    """The top-level sections some schema fragment describes."""
    return {name for fragment in schema_fragments() for name in load_yaml(fragment).get("properties", {})}


def check_values(config: dict, source="config"):
    """What JSON Schema cannot say, checked after the fragments (the Snakefile runs it too): every top-level
    section is known, every number is finite, the training budget exceeds its Hessian reserve."""
    unknown = sorted(set(config) - sections())
    if unknown:
        raise PgolfError(
            f"{source}: unknown top-level section(s) {unknown}; known sections: {sorted(sections())} "
            "(a misspelt section would be ignored silently): fix the name in your config or recipe"
        )

    def walk(value, where):
        if isinstance(value, float) and not math.isfinite(value):
            raise PgolfError(f"{source}: {where}: {value} is not a finite number; set a finite value in your config")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            walk(item, f"{where}.{key}" if where else str(key))

    walk(config, "")
    train = config.get("train") or {}
    budget, reserve = train.get("budget_seconds"), train.get("hessian_reserve_seconds")
    if budget is not None and reserve is not None and budget <= reserve:
        raise PgolfError(
            f"{source}: train.budget_seconds ({budget}) must exceed train.hessian_reserve_seconds ({reserve}), "
            "which the Hessian collection keeps from it; raise the budget or lower the reserve"
        )


def validate(config: dict, source="config", schema_dir=SCHEMA_DIR) -> dict:
    """Validate against every schema fragment, filling defaults in place (Snakemake's set_default), then
    check_values."""
    import jsonschema

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, json.loads(json.dumps(sub["default"])))
        yield from jsonschema.Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)

    Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"properties": set_defaults})
    for fragment in schema_fragments(schema_dir):
        schema = load_yaml(fragment)
        errors = sorted(Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
        if errors:
            raise PgolfError(
                f"{source}: {schema_error(errors[0], fragment.name)}; fix that key in your config or recipe"
            )
    check_values(config, source)
    return config


def schema_error(error, fragment: str) -> str:
    """One jsonschema error in a line: the key, its value and what the schema allows there (never the schema)."""
    path = [str(p) for p in error.absolute_path]
    instance = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    known = schema.get("properties", {})
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        unknown = sorted(k for k in instance if k not in known)
        path, instance = path + [unknown[0]], instance[unknown[0]]
    where = ".".join(path) or "(top level)"
    value = json.dumps(instance, default=str)
    value = value if len(value) <= 80 else value[:77] + "..."
    if error.validator == "additionalProperties":
        allowed = f"allowed keys: {', '.join(sorted(known))}"
    elif error.validator == "required":
        allowed = f"required keys: {', '.join(schema.get('required', []))}"
    else:
        allowed = schema.get("description") or f"{error.validator}: {json.dumps(error.validator_value, default=str)}"
    return f"{where} = {value}: {error.message} ({allowed}; schema {fragment})"


def resolve(paths) -> dict:
    """Merge config files left to right and validate the result."""
    if not paths:
        raise PgolfError("pgolf.config resolve: name at least one config file (config.yaml first)")
    merged = {}
    for path in paths:
        merged = deep_merge(merged, load_yaml(path))
    return validate(merged, source=" + ".join(str(p) for p in paths))


RUN_SECTIONS = (
    "run",
    "hardware",
    "model",
    "train",
    "hessians",
    "eval",
    "pack",
)  # with data.name and quant: what run_all reads


def narrow_config(config: dict, preset: str) -> dict:
    """The sections run_all reads, with this preset only, and of `data` its name and whether the val data has
    CaseOps' byte sidecar (data.hf.caseops): editing another preset, the rest of the data source, the audit or the
    submission's texts leaves the script (and everything after it) unchanged."""
    presets = (config.get("quant") or {}).get("presets") or {}
    if preset not in presets:
        raise PgolfError(
            f"--config: quant.presets has no preset {preset!r} (it has {sorted(presets)}); "
            "pass a preset defined in config.yaml or your recipe"
        )
    narrowed = {key: config[key] for key in RUN_SECTIONS if key in config}
    data = config.get("data") or {}
    if "name" in data:
        narrowed["data"] = {"name": data["name"]}
    if "caseops" in (data.get("hf") or {}):  # false: val data may lack the byte sidecar (pgolf.piece_bytes ships)
        narrowed.setdefault("data", {})["hf"] = {"caseops": data["hf"]["caseops"]}
    narrowed["quant"] = {"presets": {preset: presets[preset]}, "submission_preset": preset}
    if "eval" in narrowed:  # eval.artifact switches the DAG to an outside blob; the submission never reads it
        narrowed["eval"] = {key: value for key, value in narrowed["eval"].items() if key != "artifact"}
    return narrowed


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.config", description=doc_summary(__doc__))
    sub = parser.add_subparsers(dest="command", required=True)
    res = sub.add_parser("resolve", help="merge config files left to right, validate, print JSON")
    res.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    json.dump(resolve(args.files), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
