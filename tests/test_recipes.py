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


# PR #1572's hyperparameter dump (train_seed42_frontier.log): dump name -> (its value, the pgolf key(s) holding it).
DUMP_1572 = {
    "adam_eps": (1e-8, ["train.adam_eps"]),
    "adam_wd": (0.02, ["train.scalar_wd"]),
    "beta1": (0.9, ["train.adam_beta1"]),
    "beta2": (0.95, ["train.adam_beta2"]),
    "ema_decay": (0.9965, ["train.ema_decay"]),
    "embed_bits": (8, ["quant.presets.pr1572.embed.bits"]),
    "embed_clip_sigmas": (20.0, ["quant.presets.pr1572.embed.clip_sigmas"]),
    "embed_wd": (0.085, ["train.embed_wd"]),
    "embedding_dim": (512, ["model.model_dim"]),  # equal to model_dim: no embedding projections
    "enable_looping_at": (0.35, ["model.enable_looping_at"]),
    "eval_seq_len": (2048, ["eval.seq_len", "eval.ttt.seq_len"]),
    "eval_stride": (64, ["eval.sliding_stride"]),
    "gptq_calibration_batches": (64, ["hessians.calibration_batches"]),
    "gptq_reserve_seconds": (12.0, ["train.hessian_reserve_seconds"]),
    "grad_clip_norm": (0.3, ["train.grad_clip"]),
    "iterations": (20000, ["train.steps"]),
    "ln_scale": (True, ["model.ln_scale"]),
    "logit_softcap": (30.0, ["model.logit_softcap"]),
    "loop_end": (5, ["model.loop_end"]),
    "loop_start": (3, ["model.loop_start"]),
    "matrix_bits": (6, ["quant.presets.pr1572.attn.bits", "quant.presets.pr1572.mlp.bits"]),
    "matrix_clip_sigmas": (12.85, ["quant.presets.pr1572.attn.clip_sigmas", "quant.presets.pr1572.mlp.clip_sigmas"]),
    "matrix_lr": (0.022, ["train.matrix_lr"]),
    "max_wallclock_seconds": (600.0, ["train.budget_seconds"]),
    "min_lr": (0.0, ["train.min_lr"]),
    "mlp_mult": (4.0, ["model.mlp_mult"]),
    "model_dim": (512, ["model.model_dim"]),
    "muon_backend_steps": (5, ["train.muon_backend_steps"]),
    "muon_momentum": (0.99, ["train.muon_momentum"]),
    "muon_momentum_warmup_start": (0.92, ["train.muon_momentum_warmup_start"]),
    "muon_momentum_warmup_steps": (1500, ["train.muon_momentum_warmup_steps"]),
    "muon_row_normalize": (True, ["train.muon_row_normalize"]),
    "muon_wd": (0.095, ["train.muon_wd"]),
    "num_heads": (8, ["model.num_heads"]),
    "num_kv_heads": (4, ["model.num_kv_heads"]),
    "num_layers": (11, ["model.num_layers"]),
    "num_loops": (2, ["model.num_loops"]),
    "parallel_residual_start": (7, ["model.parallel_start_layer"]),
    "qk_gain_init": (5.25, ["model.qk_gain_init"]),
    "rope_base": (10000.0, ["model.rope_base"]),
    "rope_dims": (16, ["model.rope_dims"]),
    "rope_train_seq_len": (2048, ["model.train_seq_len"]),  # its NTK rescaling starts only above 2,048
    "scalar_lr": (0.02, ["train.scalar_lr"]),
    "tie_embeddings": (True, ["model.tie_embeddings"]),
    "tied_embed_init_std": (0.005, ["model.tied_embed_init_std"]),
    "tied_embed_lr": (0.03, ["train.embed_lr"]),
    "train_batch_tokens": (786432, ["train.batch_tokens"]),
    "train_seq_len": (2048, ["model.train_seq_len"]),
    "ttt_chunk_tokens": (32768, ["eval.ttt.global_chunk_tokens"]),
    "ttt_enabled": (True, ["eval.ttt.enabled"]),
    "ttt_epochs": (3, ["eval.ttt.global_epochs"]),
    "ttt_lr": (0.005, ["eval.ttt.global_lr"]),
    "ttt_momentum": (0.9, ["eval.ttt.global_momentum"]),
    "val_batch_tokens": (524288, ["eval.batch_tokens"]),
    "vocab_size": (8192, ["model.vocab_size", "data.vocab_size"]),
    "warmdown_frac": (0.72, ["train.warmdown_frac"]),
    "warmup_steps": (20, ["train.compile_warmup_steps"]),  # warm-up steps whose weights are then restored
    "world_size": (8, ["hardware.gpus"]),
    "xsa_last_n": (11, ["model.xsa_last_n"]),
    # settings spelled differently in pgolf
    "compressor": ("brotli", {"pack.compressor": "brotli_shuffle"}),
    "sliding_window_enabled": (True, {"eval.sliding_stride": 64}),
    "skip_gates_enabled": (True, {}),  # pgolf's skips are always gated
    "etlb_enabled": (False, {}),  # the eval-time logit bias never ran (etlb_* are its unused knobs)
    "datasets_dir": (
        "/workspace/data/datasets/fineweb10B_sp8192",
        {"data.hf.shard_dir": "datasets/datasets/fineweb10B_sp8192"},
    ),
    "tokenizer_path": (
        "/workspace/data/tokenizers/fineweb_8192_bpe.model",
        {"data.hf.tokenizer": "datasets/tokenizers/fineweb_8192_bpe.model", "data.hf.caseops": False},
    ),
}
# Dump entries with nothing to set: unused with tied embeddings or by Muon, derived, paths and bookkeeping.
UNUSED_1572 = {
    "embed_lr",
    "head_lr",
    "muon_beta2",
    "etlb_clip",
    "etlb_lr",
    "etlb_steps",
    "grad_accum_steps",
    "distributed",
    "is_main_process",
    "local_rank",
    "rank",
    "seed",
    "run_id",
    "logfile",
    "model_path",
    "quantized_model_path",
    "data_dir",
    "train_files",
    "val_files",
    "train_log_every",
    "val_loss_every",
}


def resolved(name: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "pgolf.config", "resolve", "config.yaml", f"recipes/{name}.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return __import__("json").loads(proc.stdout)


def lookup(config: dict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def test_pr1572_recipe_holds_every_value_of_its_dump():
    config = resolved("pr1572")
    for name, (value, keys) in DUMP_1572.items():
        expected = dict.fromkeys(keys, value) if isinstance(keys, list) else keys
        for key, want in expected.items():
            assert lookup(config, key) == want, f"{name}: {key} = {lookup(config, key)!r}, the dump ran {want!r}"
    assert not set(DUMP_1572) & UNUSED_1572 and len(DUMP_1572) + len(UNUSED_1572) == 86  # the dump's 86 entries
    assert config["eval"]["ttt"]["mode"] == "sgd" and config["eval"]["ttt"]["global_batch_seqs"] == 32
    assert config["eval"]["ttt"]["global_grad_clip"] == 1.0 and config["model"]["parallel_residual"] == "single"
    assert config["model"]["cross_document"] and config["train"]["muon_backend"] == "newton_schulz"


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
