"""Recipes = the runs: every hyperparameter the upstream runs printed is mapped (docs/recipe-table.yaml), and each
recipe, resolved as Snakemake merges it, carries its run's values, parameter count and comparison bpb.

    pytest tests/test_recipe_table.py
"""

import copy
import re

import pytest
import torch
import yaml

from pgolf import recipe_table as rt
from pgolf.errors import PgolfError
from pgolf.model import GPT, ModelConfig

from conftest import ROOT

TABLE = rt.load_table()
RUNS = ["pr1855", "pr2123", "pr2164", "pr1935", "pr1512", "pr1572"]
PRINTED = {"pr1512": 70, "pr1572": 80}  # names in the block (smaller classes than #1855's); 100 for the others
OWN_SECTIONS = ("run", "submission")  # a recipe's name and its submission's metadata are pgolf's own


def leaves(tree: dict, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def test_the_table_covers_the_runs():
    assert set(RUNS) <= set(TABLE["runs"])


@pytest.mark.parametrize("run", RUNS)
def test_every_printed_hyperparameter_is_mapped(run):
    printed = rt.parse_dump(ROOT / TABLE["runs"][run]["dump"])
    assert len(printed) > PRINTED.get(run, 100)
    unmapped = sorted(set(printed) - set(TABLE["params"]))
    assert not unmapped, f"{run}: add these names to params in docs/recipe-table.yaml: {unmapped}"
    declared = {**(TABLE["runs"][run].get("implied") or {}), **(TABLE["runs"][run].get("changes") or {})}
    assert set(declared) <= set(TABLE["params"])
    assert set(TABLE["runs"][run].get("not_this_run") or {}) <= set(printed)


@pytest.mark.parametrize("run", RUNS)
def test_the_recipe_has_every_mapped_value_of_its_run(run):
    findings = rt.check(TABLE, run)
    wrong = [
        f"{f.name} -> {f.target}: run {f.expected!r}, recipe {f.actual!r} [{f.source}]"
        for f in findings
        if f.status in ("MISMATCH", "unmapped")
    ]
    assert not wrong, f"{run}:\n" + "\n".join(wrong)
    for f in findings:  # only a key another branch adds may be absent
        if f.status == "pending":
            assert any("added_by" in m for m in rt.mappings(TABLE["params"][f.name])), f.name
    assert sum(f.status == "ok" for f in findings) > PRINTED.get(run, 100) - 20


@pytest.mark.parametrize("run", [r for r in RUNS if r != "pr1855"])
def test_every_value_a_recipe_sets_is_checked_against_its_run(run):
    config = rt.resolved_config(TABLE, run)
    checked = rt.checked_keys(TABLE, run, config)
    submitted = config["submission"]["preset"]
    overlay = yaml.safe_load((ROOT / TABLE["runs"][run]["configs"][-1]).read_text())
    unchecked = []
    for path, _ in leaves(overlay):
        if path[0] in OWN_SECTIONS or (path[:2] == ("quant", "presets") and path[2] != submitted):
            continue
        key = ".".join(path)
        if key not in checked:
            unchecked.append(key)
    assert not unchecked, f"recipes/{run}.yaml sets values no dump line checks: {unchecked}"


def test_a_wrong_recipe_value_is_reported():
    config = rt.resolved_config(TABLE, "pr2123")
    config = copy.deepcopy(config)
    config["train"]["matrix_lr"] = 0.026
    config["quant"]["presets"]["pr2123"]["lqer"]["group"] = 64
    config["eval"]["ttt"]["targets"]["v"] = False
    wrong = {(f.name, f.target) for f in rt.check(TABLE, "pr2123", config) if f.status == "MISMATCH"}
    assert wrong == {
        ("matrix_lr", "train.matrix_lr"),
        ("lqer_asym_group", "quant.presets.{preset}.lqer.group"),
        ("ttt_mask", "eval.ttt.targets"),
    }  # #2123 implies every adapter; it prints no ttt_v_lora


def test_pr2164_is_2140_plus_its_declared_changes():
    printed = rt.parse_dump(ROOT / TABLE["runs"]["pr2164"]["dump"])
    values = rt.run_values(TABLE, "pr2164")
    assert printed["gptq_calibration_batches"] == 16 and values["gptq_calibration_batches"][0] == 32
    assert printed["gptq_reserve_seconds"] == 4.0 and values["gptq_reserve_seconds"][0] == 2.0
    config = rt.resolved_config(TABLE, "pr2164")
    assert config["hessians"]["calibration_batches"] == 32 and config["train"]["hessian_reserve_seconds"] == 2.0


@pytest.mark.parametrize("run", RUNS)
def test_the_recipe_model_has_the_runs_parameter_count(run):
    config = rt.resolved_config(TABLE, run)
    with torch.device("meta"):
        model = GPT(ModelConfig(**config["model"]))
    upstream_count = sum(p.numel() for p in model.parameters())  # train_gpt.py's model_params line
    assert upstream_count == rt.parse_header(ROOT / TABLE["runs"][run]["dump"])["model_params"]


@pytest.mark.parametrize("run", RUNS)
def test_comparison_bpb_is_the_runs_and_cites_its_dump(run):
    config = rt.resolved_config(TABLE, run)
    assert config["submission"]["comparison_bpb"] == rt.comparison_bpb(TABLE, run)
    text = (ROOT / TABLE["runs"][run]["configs"][-1]).read_text()
    line = re.search(r"^  comparison_bpb: .*$", text, re.MULTILINE).group(0)
    assert TABLE["runs"][run]["dump"] in line, line


def test_docs_recipes_md_is_generated_from_the_table():
    assert (ROOT / "docs" / "recipes.md").read_text() == rt.render_markdown(TABLE), (
        "regenerate: python -m pgolf.recipe_table docs > docs/recipes.md"
    )


def test_printed_values_parse_as_the_scripts_print_them(tmp_path):
    dump = tmp_path / "run.txt"
    dump.write_text("# header\nHyperparameters:\n  a: True\n  b: 4_6\n  c: 1e-08\n  d: \n  e: 3\n  f: no_qv\n")
    assert rt.parse_dump(dump) == {"a": True, "b": "4_6", "c": 1e-8, "d": "", "e": 3, "f": "no_qv"}
    dump.write_text("Hyperparameters:\n  a: 1\nstray line\n")
    with pytest.raises(PgolfError, match="run.txt:3"):
        rt.parse_dump(dump)
    assert rt.TRANSFORMS["length_steps"]("256:16,2000:32", {}) == [[256, 16], [2000, 32]]
    assert rt.TRANSFORMS["seq_schedule"]("1024@0.100,3072@1.000", {}) == [[1024, 0.1], [3072, 1.0]]
    assert rt.TRANSFORMS["calibration_rows"](786432, {"train_seq_len": 3072}) == 32


def test_a_malformed_table_entry_is_an_error(tmp_path):
    bad = tmp_path / "table.yaml"
    bad.write_text(yaml.safe_dump({"runs": {}, "params": {"x": {"key": "a.b", "none": "both"}}}))
    with pytest.raises(PgolfError, match="params.x needs exactly one"):
        rt.load_table(bad)
    bad.write_text(yaml.safe_dump({"runs": {}, "params": {"x": {"key": "a.b", "transform": "nope"}}}))
    with pytest.raises(PgolfError, match="unknown transform"):
        rt.load_table(bad)
