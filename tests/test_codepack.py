"""The submission script: its modules import from memory where pgolf is absent, its config is the input's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf import codepack as C
from pgolf.errors import PgolfError

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {
    "run": {"name": "smoke", "seeds": [1]},
    "hardware": {"gpus": 0, "cpu_procs": 1},
    "quant": {
        "presets": {"record": {"attn": {"bits": 6, "clip_sigmas": 13.0}}, "wide": {"attn": {"bits": 8}}},
        "build": ["record", "wide"],
    },
}
IMPORTED = ["pgolf", "pgolf.errors", "pgolf.io", "pgolf.config", "pgolf.pack", "pgolf.codepack"]

# Run in a fresh interpreter: drop every way to import the real pgolf, prove it is gone, then load the script.
PROBE = """
import importlib.util, json, os, runpy, sys
sys.path = [p for p in sys.path if not os.path.exists(os.path.join(p or '.', 'pgolf'))]
sys.meta_path = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '') + type(f).__module__]
assert importlib.util.find_spec('pgolf') is None, 'pgolf is importable without the script'
script = runpy.run_path(sys.argv[1], run_name='bundle')
names = json.loads(sys.argv[2])
for name in names:
    __import__(name)
import pgolf.pack, torch
state = {'tensors': {'x': torch.arange(6, dtype=torch.int16)}, 'meta': {}, 'config': {}}
rest = pgolf.pack._decode_remainder(pgolf.pack._encode_remainder(state['tensors'], {}, {}, [[]] * 7), 'probe')[1]
print(json.dumps({
    'config': script['CONFIG'],
    'sources': {n: sys.modules[n].__loader__.get_source(n) for n in names},
    'loaders': sorted({type(sys.modules[n].__loader__).__name__ for n in names}),
    'json_loader': type(json.__loader__).__name__,
    'works': rest['x'].tolist(),
}))
"""


@pytest.fixture(scope="module")
def modules():
    """Minifying the whole package takes seconds: do it once and let later builds reuse it."""
    original = C.package_modules
    minified = original()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(C, "package_modules", lambda d=C.PACKAGE_DIR: minified if d == C.PACKAGE_DIR else original(d))
        yield minified


@pytest.fixture(scope="module")
def script(modules, tmp_path_factory):
    path = tmp_path_factory.mktemp("code") / "train_gpt.py"
    C.main(["--config", json.dumps(CONFIG), "--preset", "record", "--out", str(path)])
    return path


def test_modules_import_from_memory(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(script), json.dumps(IMPORTED)],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["loaders"] == ["_PgolfModules"]
    assert out["json_loader"] != "_PgolfModules"  # shadows nothing outside pgolf
    assert out["works"] == list(range(6))
    for name in IMPORTED:
        rel = name.replace(".", "/") + ("/__init__.py" if name == "pgolf" else ".py")
        assert out["sources"][name] == C.minify((ROOT / rel).read_text(), rel), name
    assert out["config"] == C.narrow_config(CONFIG, "record")


def test_baked_config_is_the_input(script):
    narrowed = C.narrow_config(CONFIG, "record")
    assert narrowed == {
        "run": CONFIG["run"],
        "hardware": CONFIG["hardware"],
        "quant": {"presets": {"record": CONFIG["quant"]["presets"]["record"]}, "submission_preset": "record"},
    }
    assert C.narrow_config(narrowed, "record") == narrowed  # the rule passes the narrowed config


def test_deterministic(modules):
    source = (ROOT / "pgolf" / "pack.py").read_text()
    assert C.minify(source) == C.minify(source) == modules["pgolf.pack"][1]
    assert list(modules) == sorted(modules) and modules["pgolf.pack"][0] == "pgolf/pack.py"
    assert C.build_script(CONFIG, "record") == C.build_script(json.loads(json.dumps(CONFIG)), "record")


def test_blind_to_other_presets(script):
    edited = json.loads(json.dumps(CONFIG))
    edited["quant"]["presets"]["wide"]["attn"]["bits"] = 7
    edited["quant"]["build"] = ["wide"]
    assert C.build_script(edited, "record") == script.read_text()


def test_header_records_versions(script):
    header = C.read_header(script)
    assert header["python"] == ".".join(map(str, sys.version_info[:3]))
    assert script.read_text().splitlines()[1] == "import brotli as B,base64 as b"
    assert len(script.read_text().splitlines()) == 3


def test_entry_point_calls_run_all(tmp_path):
    pkg = tmp_path / "src" / "pgolf"
    (pkg / "inner").mkdir(parents=True)  # a folder without __init__.py becomes an empty package
    (pkg / "__init__.py").write_text('"""Docstrings go."""\n')
    (pkg / "inner" / "leaf.py").write_text("VALUE = 41\n")
    (pkg / "submission.py").write_text(
        "import json, sys\nfrom .inner.leaf import VALUE\n\n"
        "def run_all(config):\n    assert False, 'asserts are removed'\n"
        "    json.dump({'config': config, 'value': VALUE + 1}, open(sys.argv[1], 'w'))\n"
    )
    text = C.build_script(CONFIG, "wide", package_dir=pkg)
    (tmp_path / "train_gpt.py").write_text(text)
    proc = subprocess.run([sys.executable, "train_gpt.py", "out.json"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert result == {"config": C.narrow_config(CONFIG, "wide"), "value": 42}


def test_errors(tmp_path):
    with pytest.raises(PgolfError, match="no preset 'nope'"):
        C.narrow_config(CONFIG, "nope")
    (tmp_path / "plain.py").write_text("print(1)\n")
    with pytest.raises(PgolfError, match="not written by pgolf.codepack"):
        C.read_header(tmp_path / "plain.py")
    with pytest.raises(PgolfError, match="bad.py: cannot be minified"):
        C.minify("def f(:\n", "bad.py")
