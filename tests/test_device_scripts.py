"""bench/device_common.sh takes its paths and stage commands from pgolf.stages, as the rules do."""

import os
import subprocess

from pgolf import stages

from conftest import ROOT

VARS = {
    "PG_RECIPES": "x.yaml",
    "PG_DS": "d",
    "PG_RUN": "n",
    "PG_SEED": "7",
    "PG_PRESET": "p",
    "PG_GPUS": "0",
    "PG_CPU_PROCS": "1",
    "PG_RANKS": "1",
    "PG_DATA_SOURCE": "builtin",
    "PG_LOCAL_PATH": "",
    "PG_TOKENIZER": "",
}


def device_shell(tmp_path, script: str) -> list[str]:
    """Lines printed by `script` run after sourcing bench/device_common.sh with configs for run n, seed 7."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "vars.sh").write_text("".join(f"{k}={v!r}\n" for k, v in VARS.items()))
    body = f"source bench/device_common.sh\n{script}\n"
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PGOLF_DEVICE_CONFIGS": str(configs), "PGOLF_ALLOW_CPU": "1"}
    proc = subprocess.run(["bash", "-c", body], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_device_paths_and_commands_are_the_stage_tables(tmp_path):
    out = device_shell(
        tmp_path,
        'echo "$TRAIN" "$QUANT" "$P_MANIFEST"\n'
        "stage_cmd evaluate --set params.config=e.json --set input.pgrp=from/model.pgrp --drop=--prequant\n"
        'printf "%s\\n" "${STAGE_CMD[@]}"\n'
        'echo "${DOCS[@]}"',
    )
    wc = {"ds": "d", "name": "n", "seed": "7", "preset": "p"}
    assert out[0].split() == [
        stages.path("train_dir", **wc),
        stages.path("quant_dir", **wc),
        stages.path("manifest", **wc),
    ]
    values = {f"wildcards.{k}": v for k, v in wc.items()} | {"params.config": "e.json", "input.pgrp": "from/model.pgrp"}
    expected = ["-m", "pgolf.evaluate", *stages.argv("evaluate", values, drop=("--prequant",))]
    assert out[1 : 1 + len(expected)] == expected
    assert out[-1] == "--drop=--docs"  # builtin data: the tokenizer commands name no docs.jsonl
