import json
import subprocess
import sys

import pytest
import yaml

from pgolf.config import deep_merge, from_dict, load_stage_config, resolve
from pgolf.errors import PgolfError

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
        cwd=ROOT, capture_output=True, text=True, check=True,
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
        cwd=ROOT, capture_output=True, text=True,
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
