"""The size check: exact byte accounting, the cap boundary, and no size.json over the cap."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf import codepack, pack, sizecheck
from pgolf.errors import PgolfError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("size")
    gen = torch.Generator().manual_seed(0)
    state = {
        "tensors": {
            "tok_emb.weight.q": torch.randint(-63, 64, (32, 16), generator=gen).to(torch.int8),
            "blocks.0.mlp.fc.weight.q": torch.randint(-31, 32, (64, 16), generator=gen).to(torch.int8),
            "tok_emb.weight.scale": torch.rand(32).half(),
        },
        "meta": {"tok_emb.weight": "gptq (int7)"},
        "config": {"vocab_size": 32},
    }
    torch.save(state, tmp / "quantized.pt")
    pack.main(["--quantized", str(tmp / "quantized.pt"), "--out", str(tmp / "model.pgrp")])
    pkg = tmp / "src" / "pgolf"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "runall.py").write_text("def run_all(config):\n    pass\n")
    (pkg / "scriptconfig.py").write_text("def full_config(config):\n    return config\n")  # the bootstrap's entries
    config = {"quant": {"presets": {"record": {}}}}
    (tmp / "train_gpt.py").write_bytes(codepack.build_script(config, "record", package_dir=pkg))
    return tmp


def args(tmp, out="size.json"):
    return [
        "--pgrp",
        str(tmp / "model.pgrp"),
        "--pack-json",
        str(tmp / "pack.json"),
        "--code",
        str(tmp / "train_gpt.py"),
        "--preset",
        "record",
        "--out",
        str(tmp / out),
    ]


def test_size_json(inputs):
    sizecheck.main(args(inputs))
    report = json.loads((inputs / "size.json").read_text())
    artifact = (inputs / "model.pgrp").stat().st_size
    code = len((inputs / "train_gpt.py").read_bytes())
    assert report["model_bytes"] == artifact and report["code_bytes"] == code
    assert "artifact_bytes" not in report  # the challenge's artifact is model + code: total_bytes
    assert report["total_bytes"] == artifact + code
    assert report["cap_bytes"] == 16_000_000 and report["headroom_bytes"] == 16_000_000 - artifact - code
    assert report["streams"] == pack.stream_sizes((inputs / "model.pgrp").read_bytes())
    assert set(report["streams"]) == set(pack.STREAMS) and sum(report["streams"].values()) == artifact - 44
    assert report["code_python"] == platform.python_version()


def test_cap_boundary(inputs, monkeypatch):
    total = json.loads((inputs / "pack.json").read_text())["total_bytes"] + (inputs / "train_gpt.py").stat().st_size
    monkeypatch.setattr(sizecheck, "CAP_BYTES", total)
    sizecheck.main(args(inputs, "at_cap.json"))
    assert json.loads((inputs / "at_cap.json").read_text())["headroom_bytes"] == 0
    monkeypatch.setattr(sizecheck, "CAP_BYTES", total - 1)
    with pytest.raises(PgolfError) as err:
        sizecheck.main(args(inputs, "over.json"))
    message = str(err.value)
    assert f"over the cap of {total - 1:,} by 1 " in message
    assert "quant.presets.record" in message and "clip_sigmas" in message and "embed.bits" in message
    assert "lqer.top_k" in message and "tok_emb " in message
    assert not (inputs / "over.json").exists()


def test_the_scripts_over_cap_message_is_the_breakdown_alone():
    """train_gpt.py's size check says what is over the cap but not the advice, which names the DAG's config: the
    advice follows the message's first "; ", which codepack cuts, and its function goes with it."""
    source = Path(sizecheck.__file__).read_text()
    caller = "from . import sizecheck\ndef run_all():\n    sizecheck.run(1, 2, 3, 4, 'record')\n"
    unused = codepack.unused_definitions({"pgolf/sizecheck.py": source, "pgolf/runall.py": caller})
    assert "over_cap_advice" in unused["pgolf/sizecheck.py"] and "main" in unused["pgolf/sizecheck.py"]
    out = codepack.minify(source, "sizecheck.py", ["run"], unused["pgolf/sizecheck.py"], outside=set())
    assert "plus train_gpt.py" in out and "shrink" not in out and "prune_target_bytes" not in out


def test_cli_over_cap_is_one_line(inputs, monkeypatch):
    # A cap of 16,000,000 cannot be crossed with a small file, so make train_gpt.py huge instead (sparse write).
    big = inputs / "big" / "train_gpt.py"
    big.parent.mkdir()
    text = (inputs / "train_gpt.py").read_bytes()
    with open(big, "wb") as f:
        f.write(text)
        f.truncate(16_000_000)
    cmd = [sys.executable, "-m", "pgolf.sizecheck", *args(inputs, "cli.json")]
    cmd[cmd.index("--code") + 1] = str(big)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "is over the cap of 16,000,000" in proc.stderr
    assert not (inputs / "cli.json").exists()


def test_bad_inputs(inputs, tmp_path):
    (tmp_path / "model.pgrp").write_bytes((inputs / "model.pgrp").read_bytes() + b"!")
    (tmp_path / "pack.json").write_text((inputs / "pack.json").read_text())
    (tmp_path / "train_gpt.py").write_bytes((inputs / "train_gpt.py").read_bytes())
    with pytest.raises(PgolfError, match="model.pgrp: sha256 .* differs from"):
        sizecheck.main(args(tmp_path))
    (tmp_path / "model.pgrp").write_bytes((inputs / "model.pgrp").read_bytes())
    (tmp_path / "train_gpt.py").write_text("print('hand written')\n")
    with pytest.raises(PgolfError, match="train_gpt.py: not written by pgolf.codepack"):
        sizecheck.main(args(tmp_path))
    assert not (tmp_path / "size.json").exists()
