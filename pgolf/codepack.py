"""The single-file submission script: every pgolf module, minified and compressed, plus one preset's config.

    python -m pgolf.codepack --config resolved.json --preset record \
        --out results/<name>/seed<seed>/quant/record/train_gpt.py

The challenge counts the bytes of train_gpt.py and runs it with `torchrun --standalone --nproc_per_node=8
train_gpt.py`. Each module of pgolf/**/*.py is minified with python-minifier (upstream's options, record-stack.md
§7.5); a bootstrap holding the modules and the config is brotli-compressed and base85-encoded under a three-line
stub. The bootstrap installs a meta-path importer that serves the pgolf.* modules from memory (and nothing
else), then, run as a script, calls pgolf.submission.run_all(CONFIG). The first line records the Python and
python-minifier versions, since the minified text (and so the counted size) depends on them.
"""

import argparse
import base64
import json
import platform
import re
from importlib.metadata import version
from pathlib import Path

import brotli
import python_minifier

from .config import load_stage_config
from .errors import PgolfError
from .io import write_bytes
from .quant.preset import read_preset_file

PACKAGE_DIR = Path(__file__).resolve().parent
# Upstream's `pyminify --no-rename-locals --no-hoist-literals --remove-literal-statements --remove-asserts
# --prefer-single-line`; every other option keeps python-minifier's default, as the command line does.
MINIFY_OPTIONS = dict(
    rename_locals=False,
    hoist_literals=False,
    remove_literal_statements=True,
    remove_asserts=True,
    prefer_single_line=True,
)
# plots for `snakemake --report` and the cap-fit search: not counted code, since the submission never imports them
DAG_ONLY = {"report.py", "capfit.py"}
HEADER = re.compile(r"# pgolf .* minified by Python (\S+) with python-minifier (\S+)")

BOOTSTRAP = """\
import sys,json,importlib.abc,importlib.util
M={modules}
CONFIG=json.loads({config})
class _PgolfModules(importlib.abc.MetaPathFinder,importlib.abc.Loader):
 def find_spec(self,name,path=None,target=None):
  if name in M:
   rel=M[name][0];package=[] if rel.endswith('__init__.py') else None
   return importlib.util.spec_from_file_location(name,'<train_gpt.py>/'+rel,loader=self,
    submodule_search_locations=package)
 def create_module(self,spec):return None
 def exec_module(self,module):exec(compile(M[module.__name__][1],module.__file__,'exec'),module.__dict__)
 def get_source(self,name):return M[name][1]
sys.meta_path.insert(0,_PgolfModules())
if __name__=='__main__':
 import pgolf.submission;pgolf.submission.run_all(CONFIG)
"""


def minify(source: str, filename: str = "<source>") -> str:
    try:
        return python_minifier.minify(source, filename=filename, **MINIFY_OPTIONS)
    except SyntaxError as e:
        raise PgolfError(f"{filename}: cannot be minified ({e}); fix the syntax error") from None


def module_name(relpath: str) -> str:
    parts = relpath.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def submitted_files(package_dir=PACKAGE_DIR) -> list[Path]:
    """The package's modules that train_gpt.py carries: all but the DAG-only ones it never imports."""
    package_dir = Path(package_dir)
    return [
        path for path in sorted(package_dir.rglob("*.py"))
        if "__pycache__" not in path.parts and path.relative_to(package_dir).as_posix() not in DAG_ONLY
    ]


def package_modules(package_dir=PACKAGE_DIR) -> dict:
    """{module name: (path relative to the package's parent, minified source)}, sorted by name.

    A folder without __init__.py (a namespace package in the source tree) gets an empty package module.
    """
    package_dir = Path(package_dir)
    modules = {}
    for path in submitted_files(package_dir):
        rel = path.relative_to(package_dir.parent).as_posix()
        modules[module_name(rel)] = (rel, minify(path.read_text(), rel))
        for parent in path.relative_to(package_dir.parent).parents:
            if parent.as_posix() != ".":
                init = f"{parent.as_posix()}/__init__.py"
                modules.setdefault(module_name(init), (init, ""))
    return dict(sorted(modules.items()))


def narrow_config(config: dict, preset: str) -> dict:
    """The config without `quant`, plus this preset only: editing another preset leaves the script unchanged."""
    presets = (config.get("quant") or {}).get("presets") or {}
    if preset not in presets:
        raise PgolfError(
            f"--config: quant.presets has no preset {preset!r} (it has {sorted(presets)}); "
            "pass a preset defined in config.yaml or your recipe"
        )
    narrowed = {key: value for key, value in config.items() if key != "quant"}
    narrowed["quant"] = {"presets": {preset: presets[preset]}, "submission_preset": preset}
    if "eval" in narrowed:  # eval.artifact switches the DAG to an outside blob; the submission never reads it
        narrowed["eval"] = {key: value for key, value in narrowed["eval"].items() if key != "artifact"}
    return narrowed


def with_preset(config: dict, preset: str, values: dict) -> dict:
    """The config with quant.presets[preset] set to `values` (a preset written to a file by pgolf.capfit)."""
    quant = dict(config.get("quant") or {})
    quant["presets"] = {**(quant.get("presets") or {}), preset: values}
    return {**config, "quant": quant}


def build_script(config: dict, preset: str, package_dir=PACKAGE_DIR, modules=None) -> str:
    """The text of train_gpt.py for one preset; `modules` is package_modules(package_dir), when the caller has it."""
    config = narrow_config(config, preset)
    bootstrap = BOOTSTRAP.format(
        modules=repr(package_modules(package_dir) if modules is None else modules),
        config=repr(json.dumps(config, sort_keys=True, separators=(",", ":"))),
    )
    payload = base64.b85encode(brotli.compress(bootstrap.encode(), quality=11)).decode()
    return (
        f"# pgolf {preset}: minified by Python {platform.python_version()} "
        f"with python-minifier {version('python-minifier')}\n"
        "import brotli as B,base64 as b\n"
        f'exec(B.decompress(b.b85decode("{payload}")))\n'
    )


def read_header(path) -> dict:
    """The versions that generated a train_gpt.py, from its first line."""
    try:
        first = Path(path).read_text().split("\n", 1)[0]
    except FileNotFoundError:
        raise PgolfError(f"{path}: file not found; run the code rule first") from None
    match = HEADER.fullmatch(first)
    if not match:
        raise PgolfError(f"{path}: not written by pgolf.codepack (no version line); re-run the code rule")
    return {"python": match.group(1), "python_minifier": match.group(2)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.codepack", description="Write the submission script.")
    parser.add_argument("--config", required=True, help="resolved config (JSON text or path)")
    parser.add_argument("--preset", required=True, help="the quantization preset this script submits")
    parser.add_argument("--preset-file", help="the preset's settings from this JSON file (the capfit stage's preset.json)")
    parser.add_argument("--out", required=True, help="train_gpt.py to write")
    args = parser.parse_args(argv)
    config = load_stage_config(args.config)
    if args.preset_file:
        config = with_preset(config, args.preset, read_preset_file(args.preset_file))
    write_bytes(args.out, build_script(config, args.preset).encode())


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
