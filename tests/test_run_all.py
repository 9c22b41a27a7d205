"""pgolf.runall.run_all calls each stage's function in-process, below its root, in DAG order, on data made
beforehand, with the arguments the stage's main() passes it for the rule's command (pgolf.stages)."""

import inspect
import json
from pathlib import Path

import pytest

from pgolf import dist, evaluate, hessians, pack, quantize, runall, sizecheck, stages, train
from pgolf.errors import PgolfError

CONFIG = {
    "data": {"name": "d", "source": "builtin"},
    "run": {"name": "n", "seeds": [3]},
    "hardware": {"gpus": 0},
    "model": {},
    "train": {},
    "quant": {"presets": {"p": {"bits": 6}}, "submission_preset": "p"},
    "pack": {"compressor": "brotli_shuffle"},
}
# rule -> the module and function its command's main() calls
FUNCTIONS = {
    "train": (train, "run"),
    "hessians": (hessians, "run"),
    "quantize": (quantize, "run"),
    "pack": (pack, "run"),
    "size_check": (sizecheck, "run"),
    "eval_prequant": (evaluate, "prequant"),
    "evaluate": (evaluate, "artifact"),
}


class FakeDist:
    is_main = True

    def barrier(self):
        pass


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Every stage function called, as (rule, {parameter: value, paths as text}), with the data and eval.json in
    place."""
    recorded = []
    for rule, (module, name) in FUNCTIONS.items():
        signature = inspect.signature(getattr(module, name))

        def record(*args, rule=rule, signature=signature, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            recorded.append((rule, {k: str(v) if isinstance(v, Path) else v for k, v in bound.arguments.items()}))

        monkeypatch.setattr(module, name, record)
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


def test_run_all_calls_each_stage_as_its_rules_command_does(calls, tmp_path):
    assert runall.run_all(CONFIG, code_path="train_gpt.py", root=tmp_path) == {"final_bpb": 1.5}
    from_run_all = list(calls)
    calls.clear()
    cfg = json.dumps(CONFIG, sort_keys=True)
    quant_cfg = json.dumps({"preset": {"bits": 6}, "hardware": {"gpus": 0}})
    values = {f"wildcards.{k}": v for k, v in {"ds": "d", "name": "n", "seed": 3, "preset": "p"}.items()}
    commands = {
        "train": {"params.config": cfg},
        "hessians": {"params.config": cfg},
        "quantize": {"params.config": quant_cfg},
        "pack": {"params.compressor": "brotli_shuffle", "params.prune_target": "none"},
        "size_check": {"input.script": "train_gpt.py"},
        "eval_prequant": {"params.config": cfg},
        "evaluate": {"params.config": cfg},
    }
    for rule, extra in commands.items():
        words = stages.argv(rule, {**values, **extra}, root=tmp_path)
        # the brotli-only comparison is the DAG's, not the judge's
        FUNCTIONS[rule][0].main(words + (["--no-baseline"] if rule == "pack" else []))
    assert [rule for rule, _ in from_run_all] == list(commands)
    assert from_run_all == calls
    data, run = tmp_path / "resources/data/d", tmp_path / "results/n"
    assert from_run_all[0][1] == {  # as the train rule spells it (rules/train.smk)
        "config": CONFIG, "manifest": f"{data}/manifest.json", "audit": f"{data}/data_audit.json", "seed": 3,
        "out_dir": f"{run}/seed3/train", "cache_dir": f"{run}/compile_cache", "stop_after_step": None,
    }  # fmt: skip
    assert from_run_all[3][1]["baseline"] is False


def test_run_all_refuses_without_the_data(calls, tmp_path):
    (tmp_path / stages.path("data_audit", ds="d")).unlink()
    with pytest.raises(PgolfError, match=r"data_audit.json: not found; make the data first"):
        runall.run_all(CONFIG, code_path="train_gpt.py", root=tmp_path)
    assert calls == []
