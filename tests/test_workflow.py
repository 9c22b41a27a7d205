"""The workflow itself: lint and format clean, and the dry-run plans of each data source."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import torch
import yaml

from pgolf import checkpoint
from pgolf.launch import children

from conftest import ROOT, copy_workflow, live_tree, snakemake


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
    prefixes = re.findall(r'^(?:LAUNCH|OMP_LAUNCH) = \(\s*((?:"[^"]*"[\s,]*)+)\)', common, re.M)
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


def _with_configs(workdir, shells: list[str]) -> str:
    """The shell commands with the --config files they name (the rules pass each stage's config as a file)."""
    files = [workdir / m for s in shells for m in re.findall(r"--config (\S+)", s)]
    return " ".join(shells + [f.read_text() for f in files if f.is_file()])


def test_submission_metadata_reaches_only_the_submission_rule(tmp_path):
    """Editing author, name, blurb, date or github_id must not re-run code, size_check or the timed evaluate:
    only the submission rule's --config carries them (the other rules' params are their commands' config files)."""
    workdir = copy_workflow(tmp_path)
    (workdir / "meta.yaml").write_text(
        "submission:\n  author: Ada Lovelace-Marker\n  name: Name-Marker\n  blurb: Blurb-Marker\n"
        "  github_id: gh-marker\n  date: '2031-01-02'\n"
    )
    commands = _shell_commands(snakemake(workdir, "-n", "-p", "--configfile", "recipes/smoke.yaml", "meta.yaml").stdout)
    assert {"code", "size_check", "evaluate", "submission"} <= set(commands)
    for rule, shells in commands.items():
        for marker in ("Lovelace-Marker", "Name-Marker", "Blurb-Marker", "gh-marker", "2031-01-02"):
            assert (marker in _with_configs(workdir, shells)) == (rule == "submission"), (rule, marker)


def test_a_changed_setting_is_named_in_a_short_rerun_reason(tmp_path):
    """A rule's params are its --config file (named by content) and one KEY=VALUE per setting: after an edit, the
    dry run's reason names the setting, before and now, in a short line, and the stage reads the new file."""
    workdir = copy_workflow(tmp_path)
    snakemake(workdir, "--configfile", "recipes/smoke.yaml", "--until", "tokenizer")
    (workdir / "fewer.yaml").write_text("data:\n  builtin:\n    max_docs: 1400\n")
    args = ("--configfile", "recipes/smoke.yaml", "fewer.yaml")
    out = snakemake(workdir, "-n", "-p", *args, "--until", "tokenizer").stdout
    assert planned_jobs(out) == {"tokenizer": 1}
    reasons = [line for line in out.splitlines() if "Params have changed" in line]
    assert len(reasons) == 1 and len(reasons[0]) < 300, reasons
    assert "before: " in reasons[0] and "'data.builtin.max_docs=1500'" in reasons[0].split("now: ")[0]
    assert "'data.builtin.max_docs=1400'" in reasons[0].split("now: ")[1]
    shell = _shell_commands(out)["tokenizer"][0]
    assert len(shell) < 300 and "{" not in shell  # no JSON on the command line either
    config = re.search(r"--config (\S+)", shell)[1]
    assert json.loads((workdir / config).read_text())["data"]["builtin"]["max_docs"] == 1400


def test_long_stages_show_their_log_on_the_console(tmp_path):
    """The console shows what a long stage logs (tokenize here, run for real), and the log file keeps it too."""
    workdir = copy_workflow(tmp_path)
    console = snakemake(workdir, "--configfile", "recipes/smoke.yaml", "--until", "tokenize").stdout
    log = (workdir / "logs/tokenize/smoke-builtin.log").read_text().splitlines()
    done = [line for line in log if '"event": "done"' in line]
    assert len(done) == 1 and done[0] in console.splitlines()
    plan = _shell_commands(snakemake(workdir, "-n", "-p", "--configfile", "recipes/smoke.yaml").stdout)
    for rule in ("train", "hessians", "eval_prequant", "pack", "evaluate"):  # the shell becomes pgolf.tee
        assert all(
            re.match(r"^(\S+=\S+ |\S+=\$\(\(.*?\)\) )*exec python -m pgolf\.tee logs/", s) for s in plan[rule]
        ), rule
    for rule in ("quantize", "code", "size_check", "submission"):  # short: their log only
        assert all(s.startswith("exec python -m pgolf.") and s.endswith(" 2>&1") for s in plan[rule]), rule


def test_sigterm_to_a_jobs_shell_stops_training_cleanly(tmp_path):
    """The SIGTERM Snakemake (or SLURM, or `kill`) sends to a job's shell reaches the training launcher: every rank
    stops at the end of a step with a checkpoint, says where the next run resumes, and leaves no model.pt and no
    temporary file; nothing of the job keeps running."""
    workdir = copy_workflow(tmp_path)
    (workdir / "long.yaml").write_text("train:\n  steps: 100000\n  log_every: 1\n")
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--nolock", "--configfile", "recipes/smoke.yaml",
           "long.yaml", "--until", "train"]  # fmt: skip
    console = workdir / "console.txt"
    with console.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT)
    out = workdir / "results/smoke/seed1/train"
    partial = out / "log.jsonl.partial"
    try:
        deadline = time.monotonic() + 400
        while not (partial.exists() and '"step": 2,' in partial.read_text()):
            assert proc.poll() is None, console.read_text()[-4000:]
            assert time.monotonic() < deadline, "training never logged step 2"
            time.sleep(0.2)
        job_shell = children(proc.pid)
        assert len(job_shell) == 1, job_shell  # the one running job: train
        job = live_tree(job_shell[0])
        os.kill(job_shell[0], signal.SIGTERM)
        sent = time.monotonic()
        proc.wait(timeout=120)
        assert time.monotonic() - sent < 60, "training kept running after the signal"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0  # the job failed: a stopped training is no finished one
    log = (workdir / "logs/train/smoke/seed1.log").read_text()
    said = re.findall(r"^train: interrupted; the next run resumes from step (\d+)$", log, re.M)
    assert len(said) == 1, log[-3000:]
    assert said[0] in re.findall(r"resumes from step (\d+)", console.read_text())  # on the console as well
    assert torch.load(checkpoint.checkpoint_path(out), weights_only=False)["step"] == int(said[0]) >= 2
    assert not (out / "model.pt").exists() and not [p.name for p in out.iterdir() if p.suffix == ".tmp"]
    deadline = time.monotonic() + 30
    while [p for p in job if live_tree(p)]:
        assert time.monotonic() < deadline, f"processes of the job outlived it: {job}"
        time.sleep(0.1)
