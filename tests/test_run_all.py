"""pgolf.runall.run_all runs the rules' commands (pgolf.stages) in-process, below its root, in DAG order, on data
made beforehand."""

import json

import pytest

from pgolf import dist, evaluate, hessians, pack, quantize, runall, sizecheck, stages, train
from pgolf.errors import PgolfError

CONFIG = {
    "data": {"name": "d", "source": "builtin"},
    "run": {"name": "n", "seeds": [3]},
    "hardware": {"gpus": 0},
    "quant": {"presets": {"p": {"bits": 6}}, "submission_preset": "p"},
    "pack": {"compressor": "brotli_shuffle"},
}


class FakeDist:
    is_main = True

    def barrier(self):
        pass


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Every stage main() run_all calls, as (module name, argv), with the data and eval.json in place."""
    recorded = []
    modules = (train, hessians, quantize, pack, sizecheck, evaluate)
    for module in modules:
        name = module.__name__.rsplit(".", 1)[1]
        monkeypatch.setattr(module, "main", lambda argv, name=name: recorded.append((name, argv)))
    monkeypatch.setattr(dist, "init", lambda gpus: FakeDist())
    monkeypatch.setattr(dist, "shutdown", lambda: None)
    eval_json = tmp_path / stages.path("eval", ds="d", name="n", seed=3, preset="p")
    eval_json.parent.mkdir(parents=True)
    eval_json.write_text('{"final_bpb": 1.5}')
    for key in ("manifest", "data_audit"):
        made = tmp_path / stages.path(key, ds="d")
        made.parent.mkdir(parents=True, exist_ok=True)
        made.write_text("{}")
    return recorded


def test_run_all_runs_each_rules_command_below_its_root(calls, tmp_path):
    assert runall.run_all(CONFIG, code_path="train_gpt.py", root=tmp_path) == {"final_bpb": 1.5}
    cfg = json.dumps(CONFIG, sort_keys=True)
    values = {f"wildcards.{k}": v for k, v in {"ds": "d", "name": "n", "seed": 3, "preset": "p"}.items()}

    def rule(stage, **extra):
        return stages.argv(stage, {**values, **extra}, root=tmp_path)

    quant_cfg = json.dumps({"preset": {"bits": 6}, "hardware": {"gpus": 0}})
    assert [name for name, _ in calls] == [
        "train",
        "hessians",
        "quantize",
        "pack",
        "sizecheck",
        "evaluate",
        "evaluate",
    ]
    expected = [
        rule("train", **{"params.config": cfg}),
        rule("hessians", **{"params.config": cfg}),
        rule("quantize", **{"params.config": quant_cfg}),
        # the brotli-only comparison is the DAG's, not the judge's
        rule("pack", **{"params.compressor": "brotli_shuffle", "params.prune_target": "none"}) + ["--no-baseline"],
        rule("size_check", **{"input.script": "train_gpt.py"}),
        rule("eval_prequant", **{"params.config": cfg}),
        rule("evaluate", **{"params.config": cfg}),
    ]
    assert [argv for _, argv in calls] == expected
    data, run = tmp_path / "resources/data/d", tmp_path / "results/n"
    assert calls[0][1] == [  # as the train rule spells it (rules/train.smk)
        "--config", cfg, "--manifest", f"{data}/manifest.json", "--audit", f"{data}/data_audit.json", "--seed", "3",
        "--out-dir", f"{run}/seed3/train", "--compile-cache", f"{run}/compile_cache",
    ]  # fmt: skip
    assert calls[-1][1][0] == "artifact" and calls[-2][1][0] == "prequant"


def test_run_all_refuses_without_the_data(calls, tmp_path):
    (tmp_path / stages.path("data_audit", ds="d")).unlink()
    with pytest.raises(PgolfError, match=r"data_audit.json: not found; make the data first"):
        runall.run_all(CONFIG, code_path="train_gpt.py", root=tmp_path)
    assert calls == []
