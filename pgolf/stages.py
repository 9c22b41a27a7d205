"""The DAG in one place: every stage's module, command-line arguments, input and output paths, and code inputs.

    python -m pgolf.stages table                                   # the stages as a readable table
    python -m pgolf.stages paths --ds D --name N --seed S --preset P   # shell assignments of every path
    python -m pgolf.stages argv train --ds D --name N --seed S --preset P --set params.config=train.json

rules/*.smk build their input, output and shell sections from STAGES, runall.run_all calls the stages'
functions on the files of `path`, and bench/device_common.sh asks this module's CLI for paths and commands, so a
path or an option is spelled once. Only the standard library is imported here: Snakemake parses the workflow with it
before any heavy dependency need exist (docs/design.md, "One stage table").
"""

import argparse
import ast
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

DATA = "resources/data/{ds}"
RUN = "results/{name}"
TRAIN = RUN + "/seed{seed}/train"
QUANT = RUN + "/seed{seed}/quant/{preset}"
ARTIFACT = RUN + "/artifact"
CAPFIT = RUN + "/seed{seed}/quant/capfit"  # QUANT of the preset `capfit`, which the capfit stage chooses

# Every file a stage reads or writes, by one name each; the templates' fields are the rules' wildcards.
PATHS = {
    "hub_docs": "resources/hub/{ds}/docs.jsonl",
    "data_dir": DATA,
    "tokenizer": DATA + "/tokenizer.model",
    "manifest": DATA + "/manifest.json",
    "data_audit": DATA + "/data_audit.json",
    "run_dir": RUN,
    "compile_cache": RUN + "/compile_cache",
    "train_dir": TRAIN,
    "model": TRAIN + "/model.pt",
    "train_summary": TRAIN + "/summary.json",
    "train_log": TRAIN + "/log.jsonl",
    "hessians": TRAIN + "/hessians.pt",
    "hessians_summary": TRAIN + "/hessians.json",
    "prequant": TRAIN + "/prequant.json",
    "quant_dir": QUANT,
    # the capfit stage's outputs: the chosen preset (the preset `capfit`), the search, and that preset's stage configs
    "capfit_preset": CAPFIT + "/preset.json",
    "capfit_report": CAPFIT + "/capfit.json",
    "capfit_quantize_config": CAPFIT + "/quantize-config.json",
    "capfit_code_config": CAPFIT + "/code-config.json",
    "capfit_figure": RUN + "/report/capfit.svg",
    "quantized": QUANT + "/quantized.pt",
    "quant_report": QUANT + "/report.json",
    "pgrp": QUANT + "/model.pgrp",
    "pack_info": QUANT + "/pack.json",
    "script": QUANT + "/train_gpt.py",
    "size": QUANT + "/size.json",
    "eval": QUANT + "/eval.json",
    "report_dir": RUN + "/report",
    "submission_dir": RUN + "/submission/{folder}",
    "submission_json": RUN + "/submission/{folder}/submission.json",  # written last: the folder is complete
    "artifact_pgrp": ARTIFACT + "/model.pgrp",
    "artifact_info": ARTIFACT + "/pack.json",
    "artifact_size": ARTIFACT + "/size.json",
    "artifact_eval": ARTIFACT + "/eval.json",
}
REPORT_FIGURES = ("loss", "size", "bpb", "presets")
SUBMISSION_FILES = ("submission.json", "README.md", "audit.json", "train_gpt.py", "requirements.txt", "tokenizer.model")
FIELD = r"\{(input|output|params|wildcards)\.(\w+)\}|\{threads\}"  # a value in a Stage's args


@dataclass(frozen=True)
class Stage:
    """One rule's command `python -m pgolf.<module> <args>`.

    inputs/outputs/params map a name to a PATHS key; args are the command's words, where `{input.x}`,
    `{output.x}`, `{params.x}`, `{wildcards.x}` and `{threads}` name a value (the rule quotes each with `:q`).
    Inputs that depend on the config (seeds, presets, a local corpus) are added by the rule itself.
    """

    module: str
    args: tuple[str, ...]
    inputs: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    launch: bool = False  # started through pgolf.launch (torchrun), so that module is code input too
    extra_code: tuple[str, ...] = ()  # modules the command runs besides its own (the code rule's payload)
    progress: bool = False  # a long stage: its log (step, loss, tokens/s, ...) shows on the console too


def _args(text: str) -> tuple[str, ...]:
    return tuple(text.split())


STAGES = {
    "download_shards": Stage(
        "download",
        _args("--config {params.config} --out {output.manifest}"),
        outputs={"manifest": "manifest", "tokenizer": "tokenizer"},
    ),
    "download_docs": Stage(
        "download", _args("--config {params.config} --out {output.docs}"), outputs={"docs": "hub_docs"}
    ),
    "tokenizer": Stage(
        "tokenizer",
        _args("--config {params.config} --docs {input.docs} --out {output.tokenizer}"),
        outputs={"tokenizer": "tokenizer"},
    ),
    "tokenize": Stage(
        "tokenize",
        _args(
            "--config {params.config} --docs {input.docs} --tokenizer {input.tokenizer} --workers {threads} "
            "--out {output.manifest}"
        ),
        inputs={"tokenizer": "tokenizer"},
        outputs={"manifest": "manifest"},
        progress=True,
    ),
    "audit_data": Stage(
        "audit",
        _args("--config {params.config} --manifest {input.manifest} --out {output.audit}"),
        inputs={"manifest": "manifest"},
        outputs={"audit": "data_audit"},
    ),
    "train": Stage(
        "train",
        _args(
            "--config {params.config} --manifest {input.manifest} --audit {input.audit} --seed {wildcards.seed} "
            "--out-dir {params.out_dir} --compile-cache {params.compile_cache}"
        ),
        inputs={"manifest": "manifest", "audit": "data_audit"},
        outputs={"model": "model", "summary": "train_summary", "log": "train_log"},
        params={"out_dir": "train_dir", "compile_cache": "compile_cache"},
        launch=True,
        progress=True,
    ),
    "hessians": Stage(
        "hessians",
        _args(
            "--config {params.config} --model {input.model} --manifest {input.manifest} --seed {wildcards.seed} "
            "--out {output.hessians}"
        ),
        inputs={"model": "model", "manifest": "manifest"},
        outputs={"hessians": "hessians", "summary": "hessians_summary"},
        launch=True,
        progress=True,
    ),
    "eval_prequant": Stage(
        "evaluate",
        _args(
            "prequant --config {params.config} --model {input.model} --manifest {input.manifest} --out {output.eval}"
        ),
        inputs={"model": "model", "manifest": "manifest"},
        outputs={"eval": "prequant"},
        launch=True,
        progress=True,
    ),
    "quantize": Stage(
        "quantize",
        _args(
            "--config {params.config} --model {input.model} --hessians {input.hessians} "
            "--preset {wildcards.preset} --out {output.quantized}"
        ),
        inputs={"model": "model", "hessians": "hessians"},
        outputs={"quantized": "quantized", "report": "quant_report"},
    ),
    "capfit": Stage(
        "capfit",
        _args("--config {params.config} --model {input.model} --hessians {input.hessians} --out {output.preset}"),
        inputs={"model": "model", "hessians": "hessians"},
        outputs={
            "preset": "capfit_preset",
            "report": "capfit_report",
            "quantize_config": "capfit_quantize_config",
            "code_config": "capfit_code_config",
        },
        extra_code=("runall",),  # every candidate's train_gpt.py is built, so its bytes count
    ),
    "pack": Stage(
        "pack",
        _args(
            "--quantized {input.quantized} --compressor {params.compressor} --prune-target {params.prune_target} "
            "--out {output.pgrp}"
        ),
        inputs={"quantized": "quantized"},
        outputs={"pgrp": "pgrp", "info": "pack_info"},
        progress=True,
    ),
    "code": Stage(
        "codepack",
        _args("--config {params.config} --preset {wildcards.preset} --out {output.script}"),
        outputs={"script": "script"},
        # the modules train_gpt.py carries (codepack.submitted_files; tests/test_stages.py checks the two agree):
        # pgolf.runall.run_all and what it imports
        extra_code=("runall",),
    ),
    "size_check": Stage(
        "sizecheck",
        _args(
            "--pgrp {input.pgrp} --pack-json {input.info} --code {input.script} --preset {wildcards.preset} "
            "--out {output.size_json}"
        ),
        inputs={"pgrp": "pgrp", "info": "pack_info", "script": "script"},
        outputs={"size_json": "size"},
    ),
    "evaluate": Stage(
        "evaluate",
        _args(
            "artifact --config {params.config} --pgrp {input.pgrp} --pack-json {input.info} --size {input.size_json} "
            "--prequant {input.prequant} --manifest {input.manifest} --compile-cache {params.compile_cache} "
            "--out {output.eval}"
        ),
        inputs={
            "pgrp": "pgrp",
            "info": "pack_info",
            "size_json": "size",
            "prequant": "prequant",
            "manifest": "manifest",
        },
        outputs={"eval": "eval"},
        params={"compile_cache": "compile_cache"},
        launch=True,
        progress=True,
    ),
    "submission": Stage(
        "submission",
        _args(
            "--config {params.config} --run-dir {params.run_dir} --data-dir {params.data_dir} --out-dir {params.out_dir}"
        ),
        params={"run_dir": "run_dir", "data_dir": "data_dir", "out_dir": "submission_dir"},
    ),
    "report": Stage(
        "report",
        _args(
            "--run-dir {params.run_dir} --seeds {params.seeds} --presets {params.presets} --out-dir {params.out_dir}"
        ),
        params={"run_dir": "run_dir", "out_dir": "report_dir"},
    ),
    "report_capfit": Stage(
        "report",
        _args("--run-dir {params.run_dir} --seeds {params.seeds} --capfit --out-dir {params.out_dir}"),
        params={"run_dir": "run_dir", "out_dir": "report_dir"},
    ),
    "artifact_index": Stage(
        "artifact_index",
        _args("--pgrp {input.pgrp} --out {output.pgrp}"),
        outputs={"pgrp": "artifact_pgrp", "info": "artifact_info"},
    ),
    "artifact_size": Stage(
        "sizecheck",
        _args("--pgrp {input.pgrp} --pack-json {input.info} --code {input.script} --out {output.size_json}"),
        inputs={"pgrp": "artifact_pgrp", "info": "artifact_info"},
        outputs={"size_json": "artifact_size"},
    ),
    "artifact_evaluate": Stage(
        "evaluate",
        _args(
            "artifact --config {params.config} --pgrp {input.pgrp} --pack-json {input.info} --size {input.size_json} "
            "--manifest {input.manifest} --compile-cache {params.compile_cache} --out {output.eval}"
        ),
        inputs={"pgrp": "artifact_pgrp", "info": "artifact_info", "size_json": "artifact_size", "manifest": "manifest"},
        outputs={"eval": "artifact_eval"},
        params={"compile_cache": "compile_cache"},
        launch=True,
        progress=True,
    ),
}


def path(key: str, **wildcards) -> str:
    """PATHS[key] with the given wildcards filled in; fields not given stay as `{field}` for Snakemake."""
    return re.sub(r"\{(\w+)\}", lambda m: str(wildcards.get(m[1], m[0])), PATHS[key])


def files(stage: str, section: str, **wildcards) -> dict:
    """A stage's inputs, outputs or params as {name: path}, with the given wildcards filled in."""
    return {name: path(key, **wildcards) for name, key in getattr(STAGES[stage], section).items()}


def shell_args(stage: str, drop=()) -> str:
    """The stage's command for a rule's shell: every value quoted with `:q`; options in `drop` left out."""
    words, args = [], STAGES[stage].args
    i = 0
    while i < len(args):
        if args[i] in drop:
            i += 2
            continue
        words.append(re.sub(FIELD, lambda m: m[0][:-1] + ":q}", args[i]))
        i += 1
    return f"-m pgolf.{STAGES[stage].module} " + " ".join(words)


def argv(stage: str, values: dict, drop=(), root=None) -> list[str]:
    """The stage's arguments (after `-m pgolf.<module>`) with every field filled from `values`.

    `values` maps "input.x", "params.x", "wildcards.x" or "threads" to a value, used as given; the stage's
    inputs, outputs and params default to their PATHS under values' wildcards, below `root` when given. A list
    value becomes several words.
    """
    spec = STAGES[stage]
    wildcards = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("wildcards.")}
    known = dict(values)
    for section, prefix in (("inputs", "input"), ("outputs", "output"), ("params", "params")):
        for name, p in files(stage, section, **wildcards).items():
            known.setdefault(f"{prefix}.{name}", str(Path(root, p)) if root is not None else p)
    out, i = [], 0
    while i < len(spec.args):
        word = spec.args[i]
        if word in drop:
            i += 2
            continue
        match = re.fullmatch(FIELD, word)
        if match:
            ref = "threads" if match[0] == "{threads}" else f"{match[1]}.{match[2]}"
            if ref not in known:
                raise KeyError(f"stage {stage}: no value for {{{ref}}}; pass it in values")
            value = known[ref]
            out += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        else:
            out.append(word)
        i += 1
    return out


def _module_file(name: str, package_dir: Path) -> Path | None:
    """pgolf.a.b -> its file (module or package __init__), or None when it is no module of the package."""
    parts = name.split(".")[1:]
    base = package_dir.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(file: Path, package_dir: Path) -> set[str]:
    """Every pgolf module a file imports anywhere in its body (functions included), absolute or relative."""
    rel = file.relative_to(package_dir.parent).with_suffix("")
    package = list(rel.parts[:-1])  # the package a relative import starts from (an __init__'s own package)
    found = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pgolf"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "pgolf":
                base = node.module
            else:
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}", package_dir)}
    return found


def closure(modules, package_dir=PACKAGE_DIR) -> list[str]:
    """The files `import pgolf.<m>` for each module can execute: the modules, their pgolf imports (at any
    depth, from function bodies too) and the packages' __init__.py above each; sorted paths relative to the
    package's parent (pgolf/x.py)."""
    package_dir = Path(package_dir)
    todo = [f"pgolf.{m}" for m in modules]
    seen: set[Path] = set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            file = _module_file(".".join(parts[:i]), package_dir)
            if file is not None and file not in seen:
                seen.add(file)
                todo += sorted(_imports(file, package_dir))
    return sorted(p.relative_to(package_dir.parent).as_posix() for p in seen)


def code_inputs(stage: str, package_dir=PACKAGE_DIR) -> list[str]:
    """The source files a stage's command can run: the import closure of its module (and pgolf.launch for
    torchrun stages, and the modules it carries), so an edit anywhere in it re-runs the stage."""
    spec = STAGES[stage]
    return closure([spec.module, *(["launch"] if spec.launch else []), *spec.extra_code], package_dir)


def _table() -> str:
    lines = []
    for name, spec in STAGES.items():
        ins = ", ".join(PATHS[k] for k in spec.inputs.values()) or "(from the config)"
        outs = ", ".join(PATHS[k] for k in spec.outputs.values()) or "(see params)"
        launch = "pgolf.launch -- " if spec.launch else ""
        lines.append(
            f"{name}: {launch}python -m pgolf.{spec.module} {' '.join(spec.args)}\n  in:  {ins}\n  out: {outs}"
        )
    return "\n".join(lines)


def main(argv_=None):
    """`python -m pgolf.stages` (train_gpt.py leaves it out: pgolf.codepack drops what no carried code names)."""
    parser = argparse.ArgumentParser(prog="python -m pgolf.stages", description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("table", help="every stage: command, inputs, outputs")
    for name, text in (("paths", "every path as NAME=VALUE shell assignments"), ("argv", "one stage's arguments")):
        p = sub.add_parser(name, help=text)
        if name == "argv":
            p.add_argument("stage", choices=sorted(STAGES))
            p.add_argument(
                "--set",
                action="append",
                default=[],
                metavar="FIELD=VALUE",
                help="a value such as params.config=FILE, threads=8 or input.docs=PATH",
            )
            p.add_argument("--drop", action="append", default=[], help="an option to leave out (with its value)")
        for wildcard in ("ds", "name", "seed", "preset", "folder"):
            p.add_argument(f"--{wildcard}", default=None, help=f"the {{{wildcard}}} wildcard")
    args = parser.parse_args(argv_)
    wildcards = {
        k: getattr(args, k) for k in ("ds", "name", "seed", "preset", "folder") if getattr(args, k, None) is not None
    }
    if args.command == "table":
        print(_table())
    elif args.command == "paths":
        for key in PATHS:
            print(f"P_{key.upper()}={shlex.quote(path(key, **wildcards))}")
    else:
        values = {f"wildcards.{k}": v for k, v in wildcards.items()}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"--set {item!r}: expected FIELD=VALUE")
            values[key] = value
        try:
            words = argv(args.stage, values, drop=args.drop)
        except KeyError as e:
            parser.error(e.args[0])
        print("\n".join(["-m", f"pgolf.{STAGES[args.stage].module}", *words]))


if __name__ == "__main__":
    sys.exit(main())
