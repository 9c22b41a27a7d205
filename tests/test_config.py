import json
import re
import subprocess
import sys

import pytest
import yaml

from pgolf.config import deep_merge, resolve
from pgolf.errors import PgolfError
from pgolf.stageconfig import from_dict, load_stage_config

from conftest import ROOT


def test_overlay_merges_like_snakemake():
    base = {"data": {"name": "a", "local": {"path": None}, "seeds": [1, 2]}, "run": {"name": "x"}}
    overlay = {"data": {"local": {"path": "d.jsonl"}, "seeds": [3]}}
    merged = deep_merge(base, overlay)
    assert merged == {"data": {"name": "a", "local": {"path": "d.jsonl"}, "seeds": [3]}, "run": {"name": "x"}}
    assert base["data"]["local"]["path"] is None  # inputs untouched


def test_resolve_smoke_recipe_overrides_record():
    config = resolve([ROOT / "config.yaml", ROOT / "recipes/smoke.yaml"])
    record = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert config["hardware"]["gpus"] == 0
    assert config["data"]["source"] == "builtin"
    # keys the overlay does not mention keep the record's values
    assert config["audit"] == record["audit"]


def test_resolve_cli_prints_json(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pgolf.config", "resolve", "config.yaml", "recipes/smoke.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == resolve([ROOT / "config.yaml", ROOT / "recipes/smoke.yaml"])


def test_schema_error_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hardware:\n  gpus: eight\n")
    with pytest.raises(PgolfError, match=r"bad\.yaml.*hardware\.gpus.*'eight' is not of type 'integer'"):
        resolve([ROOT / "config.yaml", bad])


def test_schema_error_cli_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  seeds: []\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pgolf.config", "resolve", "config.yaml", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "run.seeds" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_config_file(tmp_path):
    with pytest.raises(PgolfError, match="nope.yaml: config file not found"):
        resolve([tmp_path / "nope.yaml"])


def test_stage_config_inline_and_file(tmp_path):
    path = tmp_path / "resolved.json"
    path.write_text('{"data": {"name": "x"}}')
    assert load_stage_config(str(path)) == load_stage_config('{"data": {"name": "x"}}') == {"data": {"name": "x"}}
    with pytest.raises(PgolfError, match="not valid JSON"):
        load_stage_config("{not json")


def test_from_dict_rejects_unknown_keys():
    import dataclasses

    @dataclasses.dataclass
    class Small:
        a: int = 1

    assert from_dict(Small, {"a": 3}, "model").a == 3
    with pytest.raises(PgolfError, match=r"model: unknown key\(s\) \['b'\]"):
        from_dict(Small, {"b": 2}, "model")


@pytest.mark.parametrize(
    "overlay,key",
    [
        ("run:\n  name: ..\n", "run.name"),
        ("run:\n  name: .\n", "run.name"),
        ("data:\n  name: ..\n", "data.name"),
        ("submission:\n  folder: ..\n", "submission.folder"),
        ("eval:\n  artifact: a$(touch PWNED)b.pgrp\n", "eval.artifact"),
        ("eval:\n  artifact: 'x.pgrp; rm -rf ~'\n", "eval.artifact"),
        ("data:\n  local:\n    path: 'docs`id`.jsonl'\n", "data.local.path"),
        ("data:\n  tokenizer: 'tok|x.model'\n", "data.tokenizer"),
        ('data:\n  hf:\n    cache_dir: "c\'ache"\n', "data.hf.cache_dir"),
    ],
)
def test_names_and_paths_refuse_dots_and_shell_metacharacters(tmp_path, overlay, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(overlay)
    with pytest.raises(PgolfError, match=rf"bad\.yaml: {re.escape(key)} = .* does not match"):
        resolve([ROOT / "config.yaml", bad])


def test_dotted_names_that_are_not_dot_or_dotdot_pass(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("run:\n  name: v1.2\ndata:\n  name: .hidden\n  local:\n    path: data/my-docs_v2.jsonl\n")
    config = resolve([ROOT / "config.yaml", good])
    assert (config["run"]["name"], config["data"]["name"]) == ("v1.2", ".hidden")


@pytest.mark.parametrize(
    "overlay,message",
    [
        ("trian:\n  steps: 5\n", r"unknown top-level section\(s\) \['trian'\]"),
        ("train:\n  matrix_lr: .nan\n", r"train\.matrix_lr: nan is not a finite number"),
        ("train:\n  budget_seconds: .inf\n", r"train\.budget_seconds: inf is not a finite number"),
        ("eval:\n  tilt:\n    boost: .inf\n", r"eval\.tilt\.boost: inf is not a finite number"),
        ("model:\n  seq_schedule: [[128, .nan]]\n", r"model\.seq_schedule\.0\.1: nan is not a finite number"),
        (
            "train:\n  budget_seconds: 0.4\n",
            r"train\.budget_seconds \(0\.4\) must exceed train\.hessian_reserve_seconds",
        ),
        (
            "train:\n  budget_seconds: 2.0\n  hessian_reserve_seconds: 2.0\n",
            r"train\.budget_seconds \(2\.0\) must exceed",
        ),
    ],
)
def test_values_schemas_cannot_check_are_refused(tmp_path, overlay, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(overlay)
    with pytest.raises(PgolfError, match=rf"bad\.yaml: {message}"):
        resolve([ROOT / "config.yaml", bad])


def test_snakemake_refuses_what_pgolf_config_refuses(tmp_path):
    from conftest import copy_workflow, snakemake

    workdir = copy_workflow(tmp_path)
    for overlay, message in [
        ("trian:\n  steps: 5\n", "unknown top-level section(s) ['trian']"),
        ("train:\n  matrix_lr: .nan\n", "train.matrix_lr: nan is not a finite number"),
    ]:
        (workdir / "bad.yaml").write_text(overlay)
        proc = snakemake(workdir, "-n", "--configfile", "recipes/smoke.yaml", "bad.yaml", check=False)
        assert proc.returncode != 0 and message in proc.stdout
