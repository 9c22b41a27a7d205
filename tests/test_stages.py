"""pgolf.stages: the one stage table, the code inputs derived from import closures, and the rules that read them."""

import json
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from pgolf import codepack, stages

from conftest import ROOT, copy_workflow, snakemake

MODULES = sorted({spec.module for spec in stages.STAGES.values()} | {"launch", "submission"})


def loaded_pgolf_files(module: str) -> set[str]:
    """The pgolf files a fresh interpreter has executed after `import pgolf.<module>` (the slow, sure reference)."""
    code = (
        f"import sys, json, pgolf.{module}; "
        "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'pgolf')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {Path(f).relative_to(ROOT).as_posix() for f in json.loads(out)}


@pytest.mark.parametrize("module", ["train", "evaluate", "tokenize", "report", "submission"])
def test_closure_covers_what_importing_runs(module):
    """Every module an import actually executes is in the ast closure (which adds imports inside functions)."""
    assert loaded_pgolf_files(module) <= set(stages.closure([module]))


def test_closure_follows_relative_imports_inside_functions_and_packages(tmp_path):
    pkg = tmp_path / "pgolf"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import c\n    from . import b\n")
    (pkg / "b.py").write_text("import json\nfrom pgolf.sub.d import x\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from ..e import y\n")
    (pkg / "sub" / "d.py").write_text("x = 1\n")
    (pkg / "e.py").write_text("y = 1\n")
    (pkg / "unused.py").write_text("")
    assert stages.closure(["a"], pkg) == [
        "pgolf/__init__.py",
        "pgolf/a.py",
        "pgolf/b.py",
        "pgolf/e.py",
        "pgolf/sub/__init__.py",
        "pgolf/sub/c.py",
        "pgolf/sub/d.py",
    ]


def test_the_code_rule_lists_every_module_train_gpt_carries():
    carried = {p.relative_to(ROOT).as_posix() for p in codepack.submitted_files()}
    assert carried <= set(stages.code_inputs("code")), "add the missing modules to the code stage's extra_code"


def test_every_option_and_field_of_a_stage_exists():
    """Each `--option` is one the module (or a helper it imports) defines; each {input,output,params}.x is the stage's own or one
    the rule adds (config-dependent inputs, config params)."""
    rule_added = {
        "input.docs",
        "input.pgrp",
        "input.script",
        "params.compressor",
        "params.prune_target",
        "params.config",
        "params.launch",
        "params.seeds",
        "params.presets",
    }
    for name, spec in stages.STAGES.items():
        source = "".join((ROOT / f).read_text() for f in stages.closure([spec.module]))  # options may be shared
        for word in spec.args:
            if word.startswith("--"):
                assert f'"{word}"' in source, f"{name}: pgolf.{spec.module} has no option {word}"
            for section, field in re.findall(r"\{(input|output|params)\.(\w+)\}", word):
                own = {"input": spec.inputs, "output": spec.outputs, "params": spec.params}[section]
                assert field in own or f"{section}.{field}" in rule_added, f"{name}: {{{section}.{field}}}"
        for key in [*spec.inputs.values(), *spec.outputs.values(), *spec.params.values()]:
            assert key in stages.PATHS, f"{name}: no path {key}"


def test_shell_args_and_argv_spell_the_same_command():
    values = {
        "wildcards.ds": "d",
        "wildcards.name": "n",
        "wildcards.seed": 3,
        "wildcards.preset": "p",
        "params.config": "{}",
        "params.compressor": "lrzip_groups",
        "params.prune_target": "none",
        "threads": 4,
        "input.docs": "docs.jsonl",
    }
    for name, spec in stages.STAGES.items():
        if name in ("submission", "report", "report_capfit", "artifact_index", "artifact_size"):
            continue  # their remaining values come from the config
        words = ["-m", f"pgolf.{spec.module}", *stages.argv(name, values)]

        def render(m):
            ref = "threads" if m[0].startswith("{threads") else f"{m[1]}.{m[2]}"
            known = {
                f"input.{k}": v for k, v in stages.files(name, "inputs", ds="d", name="n", seed=3, preset="p").items()
            }
            known |= {
                f"output.{k}": v for k, v in stages.files(name, "outputs", ds="d", name="n", seed=3, preset="p").items()
            }
            known |= {
                f"params.{k}": v for k, v in stages.files(name, "params", ds="d", name="n", seed=3, preset="p").items()
            }
            known |= {k: v for k, v in values.items() if not k.startswith("wildcards.")}
            known |= {f"wildcards.{k.split('.')[1]}": v for k, v in values.items() if k.startswith("wildcards.")}
            return shlex.quote(str(known[ref]))

        shell = re.sub(r"\{(input|output|params|wildcards)\.(\w+):q\}|\{threads:q\}", render, stages.shell_args(name))
        assert shlex.split(shell) == words, name


def test_argv_drops_an_option_and_roots_paths(tmp_path):
    words = stages.argv(
        "tokenize", {"params.config": "c", "threads": 2, "wildcards.ds": "d"}, drop=("--docs",), root=tmp_path
    )
    assert "--docs" not in words
    assert words[words.index("--tokenizer") + 1] == str(tmp_path / "resources/data/d/tokenizer.model")
    with pytest.raises(KeyError, match="no value for {params.config}"):
        stages.argv("audit_data", {"wildcards.ds": "d"})


def test_cli_prints_paths_and_commands():
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "pgolf.stages", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    paths = run("paths", "--ds", "d", "--name", "n", "--seed", "1", "--preset", "p")
    assert "P_MANIFEST=resources/data/d/manifest.json\n" in paths
    assert "P_EVAL=results/n/seed1/quant/p/eval.json\n" in paths
    argv = run("argv", "hessians", "--ds", "d", "--name", "n", "--seed", "1", "--set", "params.config=h.json")
    assert argv.splitlines() == [
        "-m",
        "pgolf.hessians",
        "--config",
        "h.json",
        "--model",
        "results/n/seed1/train/model.pt",
        "--manifest",
        "resources/data/d/manifest.json",
        "--seed",
        "1",
        "--out",
        "results/n/seed1/train/hessians.pt",
    ]


def dry_run_jobs(output: str) -> dict[str, list[list[str]]]:
    """{rule: [inputs of each planned job]} from a dry run's job listing."""
    jobs = defaultdict(list)
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        head = re.match(r"(?:local)?rule (\w+):", block)
        inputs = re.search(r"^\s+input: (.*)$", block, re.M)
        if head:
            jobs[head[1]].append(inputs[1].split(", ") if inputs else [])
    return jobs


def test_every_rules_code_inputs_are_its_stage_closure(tmp_path):
    """The pgolf/ inputs each planned job lists are exactly its stage's import closure, for every rule of both the
    smoke DAG, an outside artifact's DAG, the hub-shards download and the cap-fit branch."""
    workdir = copy_workflow(tmp_path)
    (workdir / "outside.pgrp").write_bytes(b"")
    (workdir / "artifact.yaml").write_text("eval:\n  artifact: outside.pgrp\n")
    (workdir / "shards.yaml").write_text("data:\n  source: hf_shards\n")
    (workdir / "docs.yaml").write_text("data:\n  source: hf_docs\n")
    (workdir / "capfit.yaml").write_text("quant:\n  capfit: {enabled: true}\n")
    seen = set()
    for overlay, download in (
        ((), None),
        (("artifact.yaml",), None),
        (("shards.yaml",), "download_shards"),
        (("docs.yaml",), "download_docs"),
        (("capfit.yaml",), None),
    ):
        out = snakemake(workdir, "-n", "--configfile", "recipes/smoke.yaml", *overlay).stdout
        for rule, inputs in dry_run_jobs(out).items():
            if rule == "all":
                continue
            stage = download if rule == "download" else rule
            for job_inputs in inputs:
                code = sorted(f for f in job_inputs if f.startswith("pgolf/"))
                assert code == stages.code_inputs(stage), rule
            seen.add(stage)
    assert seen == set(stages.STAGES)
