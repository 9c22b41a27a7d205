"""The workflow itself: lint and format clean, and the dry-run plans of each data source."""

import re
import subprocess
import sys

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
    assert "'ftp' is not one of" in proc.stdout


def test_capfit_adds_its_preset_branch_and_figure(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "capfit.yaml").write_text("quant:\n  capfit: {enabled: true, target_bytes: 110000}\n")
    out = snakemake(workdir, "-n", "-p", "--configfile", "recipes/smoke.yaml", "capfit.yaml").stdout
    jobs = planned_jobs(out)
    assert jobs["capfit"] == 1 and jobs["report_capfit"] == 1
    assert jobs["quantize"] == jobs["evaluate"] == 3  # record (the submission's), awq (quant.build), capfit
    assert "--preset capfit --preset-file 'results/smoke/seed1/quant/capfit/preset.json'" in out  # quantize, code
    assert out.count("--preset-file") == 2
    off = planned_jobs(snakemake(workdir, "-n", "--configfile", "recipes/smoke.yaml").stdout)
    assert "capfit" not in off and off["quantize"] == 2


def test_capfit_preset_name_is_reserved(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "bad.yaml").write_text("quant:\n  presets:\n    capfit: {}\n")
    proc = snakemake(workdir, "-n", "--configfile", "recipes/smoke.yaml", "bad.yaml", check=False)
    assert proc.returncode != 0 and "quant.presets.capfit is reserved" in proc.stdout
