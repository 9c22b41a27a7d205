"""The seed recipes (recipes/pr*.yaml): overlays of config.yaml that validate, list only what differs from the
record, and (where pgolf can express them) plan a complete DAG.

    pytest tests/test_recipes.py
"""

import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, copy_workflow, snakemake

# Recipes pgolf can express; the others name their missing knobs under a NOT YET EXPRESSIBLE header.
EXPRESSIBLE = ["pr1935", "pr2123", "pr2164", "pr1572", "pr1512"]
PARTIAL = []
MARKER = "# NOT YET EXPRESSIBLE"
BASE = yaml.safe_load((ROOT / "config.yaml").read_text())
MISSING = object()


def overlay(name: str) -> dict:
    return yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())


def leaves(tree: dict, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def base_value(path):
    node = BASE
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


def test_every_seed_recipe_is_classified():
    assert sorted(p.stem for p in (ROOT / "recipes").glob("pr*.yaml")) == sorted(EXPRESSIBLE + PARTIAL)
    for name in EXPRESSIBLE:
        assert MARKER not in (ROOT / "recipes" / f"{name}.yaml").read_text()
    for name in PARTIAL:
        assert (ROOT / "recipes" / f"{name}.yaml").read_text().startswith(MARKER)


@pytest.mark.parametrize("name", EXPRESSIBLE + PARTIAL)
def test_recipe_resolves_and_validates(name):
    proc = subprocess.run(
        [sys.executable, "-m", "pgolf.config", "resolve", "config.yaml", f"recipes/{name}.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert f'"name": "{name}"' in proc.stdout


@pytest.mark.parametrize("name", EXPRESSIBLE + PARTIAL)
def test_recipe_lists_only_what_differs(name):
    recipe = overlay(name)
    assert recipe["run"]["name"] == name and set(recipe["run"]) <= {"name", "seeds"}  # seeds: the PR's own
    sub = recipe["submission"]
    assert name in sub["folder"] and f"#{name[2:]}" in sub["name"] and "comparison_bpb" in sub
    same = [".".join(p) for p, value in leaves(recipe) if p[0] != "submission" and base_value(p) == value]
    assert not same, f"recipes/{name}.yaml repeats config.yaml values: {same}"
    preset = sub.get("preset", BASE["submission"]["preset"])
    assert preset in {**BASE["quant"]["presets"], **recipe.get("quant", {}).get("presets", {})}


@pytest.mark.parametrize("name", EXPRESSIBLE)
def test_expressible_recipe_plans_the_dag(name, tmp_path):
    proc = snakemake(copy_workflow(tmp_path), "-n", "--configfile", f"recipes/{name}.yaml")
    assert f"results/{name}/submission/2026-11-23_pgolf_{name}" in proc.stdout


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml")) + ["config"])
def test_submission_title_describes_the_recipes_model(name):
    """A title that names a depth (11L) or width (512d) names this recipe's model, not the record's."""
    from pgolf.config import resolve

    files = ["config.yaml"] if name == "config" else ["config.yaml", f"recipes/{name}.yaml"]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        config = resolve(files)
    finally:
        os.chdir(cwd)
    title = config["submission"]["name"] + " " + config["submission"]["blurb"]
    for number in re.findall(r"\b(\d+)L\b", title):
        assert int(number) == config["model"]["num_layers"], (name, title)
    for number in re.findall(r"\b(\d+)d\b", title):
        assert int(number) == config["model"]["model_dim"], (name, title)
