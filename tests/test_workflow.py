"""The workflow itself: lint and format clean, and the dry-run plans of each data source."""

import re
import subprocess
import sys

import yaml

from conftest import ROOT, copy_workflow, snakemake


def planned_jobs(output: str) -> dict[str, int]:
    """The job table of a dry run: {rule: count}."""
    table = output.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_lint_is_clean():
    for args in ([], ["--configfile", "recipes/smoke.yaml"]):
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "--lint", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_is_clean():
    proc = subprocess.run(["snakefmt", "--check", "Snakefile", "rules"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_smoke_dry_run_plans_builtin_data_rules(tmp_path):
    workdir = copy_workflow(tmp_path)
    jobs = planned_jobs(snakemake(workdir, "-n", "--configfile", "recipes/smoke.yaml").stdout)
    assert {"tokenizer", "tokenize", "audit_data"} <= set(jobs)
    assert "download" not in jobs


def test_local_source_dry_run(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "docs.jsonl").write_text('{"text": "Hello World"}\n')
    (workdir / "local.yaml").write_text(
        "data:\n  name: mine\n  source: local\n  local:\n    path: docs.jsonl\nhardware:\n  gpus: 0\n"
    )
    out = snakemake(workdir, "-n", "--configfile", "recipes/smoke.yaml", "local.yaml").stdout
    assert {"tokenizer", "tokenize", "audit_data"} <= set(planned_jobs(out))
    assert "resources/data/mine/manifest.json" in out


def test_schema_violation_stops_snakemake(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "bad.yaml").write_text("data:\n  source: ftp\n")
    proc = snakemake(workdir, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    assert "data.source = \"ftp\": 'ftp' is not one of ['hf_shards', 'hf_docs', 'local', 'builtin']" in proc.stdout
    assert "Failed validating" not in proc.stdout and len(proc.stdout.splitlines()) < 12  # never the whole schema


SAFE_PLACEHOLDERS = {"threads", "params.launch", "params.ranks"}  # integers and the launcher prefix built from them
FIELD = r"(?<!\{)\{([^{}]+)\}(?!\})"


def test_every_shell_field_is_quoted():
    """Every rule's shell is the stage table's command (pgolf.stages.shell_args) behind a launcher prefix: each
    value a stage takes is quoted with `:q`, and the prefixes hold only integers and the launcher."""
    from pgolf import stages

    fields = [f for name in stages.STAGES for f in re.findall(FIELD, stages.shell_args(name))]
    assert len(fields) > 40  # the stage table's commands were read
    assert [f for f in fields if not f.endswith(":q")] == []
    common = (ROOT / "rules" / "common.smk").read_text()
    prefixes = re.findall(r'^(?:LAUNCH|OMP_LAUNCH) = \(?\s*((?:"[^"]*"\s*)+)', common, re.M)
    assert len(prefixes) == 2
    assert set(re.findall(FIELD, "".join(prefixes))) <= SAFE_PLACEHOLDERS
    shells = [
        s
        for path in sorted((ROOT / "rules").glob("*.smk"))
        for s in re.findall(r"^\s*shell:\n\s*(.+)$", path.read_text(), re.M)
    ]
    assert len(shells) > 10 and [s for s in shells if not s.startswith("stage_shell(")] == []


def test_metacharacter_artifact_path_is_one_argument(tmp_path):
    """The schema refuses such a name; with its pattern lifted, the quoted rule still passes it as one argument."""
    name = "a$(touch PWNED)b;touch PWNED2 `touch PWNED3`.pgrp"
    workdir = copy_workflow(tmp_path)
    (workdir / name).write_bytes(b"not a pgrp")
    overlay = workdir / "artifact.yaml"
    overlay.write_text(yaml.safe_dump({"eval": {"artifact": name}}))
    refused = snakemake(workdir, "-n", "--configfile", "recipes/smoke.yaml", "artifact.yaml", check=False)
    assert refused.returncode != 0 and "does not match" in refused.stdout
    assert "eval.artifact = " in refused.stdout
    schema = workdir / "workflow/schemas/eval.schema.yaml"
    schema.write_text(re.sub(r"\n\s*pattern: .*# a path.*", "", schema.read_text()))
    proc = snakemake(
        workdir, "results/smoke/artifact/model.pgrp", "--configfile", "recipes/smoke.yaml", "artifact.yaml", check=False
    )
    assert proc.returncode != 0  # the blob is not a .pgrp
    assert not list(workdir.glob("PWNED*")), "the shell ran a command from the path"
    log = (workdir / "logs/artifact_index/smoke.log").read_text()
    assert f"{name}: no PGRP or PLZM magic" in log


def test_capfit_adds_its_preset_branch_and_figure(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "capfit.yaml").write_text("quant:\n  capfit: {enabled: true, target_bytes: 110000}\n")
    out = snakemake(workdir, "-n", "-p", "--configfile", "recipes/smoke.yaml", "capfit.yaml").stdout
    jobs = planned_jobs(out)
    assert jobs["capfit"] == 1 and jobs["report_capfit"] == 1
    assert jobs["quantize"] == jobs["evaluate"] == 3  # record (the submission's), awq (quant.build), capfit
    for config_file in ("quantize-config.json", "code-config.json"):  # the capfit preset's jobs read its files
        assert f"--config results/smoke/seed1/quant/capfit/{config_file} " in out
    off = planned_jobs(snakemake(workdir, "-n", "--configfile", "recipes/smoke.yaml").stdout)
    assert "capfit" not in off and off["quantize"] == 2


def test_capfit_preset_name_is_reserved(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "bad.yaml").write_text("quant:\n  presets:\n    capfit: {}\n")
    proc = snakemake(workdir, "-n", "--configfile", "recipes/smoke.yaml", "bad.yaml", check=False)
    assert proc.returncode != 0 and "quant.presets.capfit is reserved" in proc.stdout


def test_unknown_key_names_the_key_and_the_allowed_ones(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "bad.yaml").write_text("train:\n  lrr: 3\n")
    proc = snakemake(workdir, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    line = next(line for line in proc.stdout.splitlines() if "train.lrr" in line)
    assert line.startswith("config.yaml + --configfile: train.lrr = 3: ")
    assert "allowed keys: adam_beta1, " in line and "matrix_lr" in line and "schema train.schema.yaml" in line
    assert len(proc.stdout.splitlines()) < 12


def _shell_commands(output: str) -> dict[str, list[str]]:
    """{rule: [shell command, ...]} of a `snakemake -n -p` plan."""
    commands: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        if rule and shell:
            commands.setdefault(rule[1], []).append(shell[1])
    return commands


def test_submission_metadata_reaches_only_the_submission_rule(tmp_path):
    """Editing author, name, blurb, date or github_id must not re-run code, size_check or the timed evaluate:
    only the submission rule's params carry them (the other rules' params are what -p prints)."""
    workdir = copy_workflow(tmp_path)
    (workdir / "meta.yaml").write_text(
        "submission:\n  author: Ada Lovelace-Marker\n  name: Name-Marker\n  blurb: Blurb-Marker\n"
        "  github_id: gh-marker\n  date: '2031-01-02'\n"
    )
    commands = _shell_commands(snakemake(workdir, "-n", "-p", "--configfile", "recipes/smoke.yaml", "meta.yaml").stdout)
    assert {"code", "size_check", "evaluate", "submission"} <= set(commands)
    for rule, shells in commands.items():
        for marker in ("Lovelace-Marker", "Name-Marker", "Blurb-Marker", "gh-marker", "2031-01-02"):
            assert (marker in " ".join(shells)) == (rule == "submission"), (rule, marker)


def test_long_stages_show_their_log_on_the_console(tmp_path):
    """The console shows what a long stage logs (tokenize here, run for real), and the log file keeps it too."""
    workdir = copy_workflow(tmp_path)
    console = snakemake(workdir, "--configfile", "recipes/smoke.yaml", "--until", "tokenize").stdout
    log = (workdir / "logs/tokenize/smoke-builtin.log").read_text().splitlines()
    done = [line for line in log if '"event": "done"' in line]
    assert len(done) == 1 and done[0] in console.splitlines()
    plan = _shell_commands(snakemake(workdir, "-n", "-p", "--configfile", "recipes/smoke.yaml").stdout)
    for rule in ("train", "hessians", "eval_prequant", "pack", "evaluate"):
        assert all(s.startswith("set -o pipefail; ") and " 2>&1 | tee -i logs/" in s for s in plan[rule]), rule
    for rule in ("quantize", "code", "size_check", "submission"):  # short: their log only
        assert all(s.endswith(" 2>&1") and "tee" not in s for s in plan[rule]), rule
