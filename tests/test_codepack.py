"""The submission script: it carries the import closure of run_all and nothing else, its modules import from memory
where pgolf and python-minifier are absent, its config is the run's, and its literal holds any bytes."""

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf import codepack as C
from pgolf.config import resolve
from pgolf.errors import PgolfError
from pgolf.scriptconfig import full_config, sections, sparse_config
from pgolf.stages import closure

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {
    "run": {"name": "smoke", "seeds": [1]},
    "hardware": {"gpus": 0, "cpu_procs": 1},
    "data": {"name": "tiny", "source": "builtin", "hf": {"repo": "someone/data"}},
    "audit": {"max_overlap_fraction": 0.001},
    "submission": {"preset": "record", "blurb": "words the judge's run never reads"},
    "eval": {"seq_len": 64, "artifact": "outside.pgrp"},
    "quant": {
        "presets": {"record": {"attn": {"bits": 6, "clip_sigmas": 13.0}}, "wide": {"attn": {"bits": 8}}},
        "build": ["record", "wide"],
    },
}
IMPORTED = ["pgolf", "pgolf.errors", "pgolf.io", "pgolf.stageconfig", "pgolf.pack", "pgolf.sizecheck", "pgolf.runall"]
DAG_ONLY = [
    "download",
    "tokenize",
    "tokenizer",
    "sources",
    "audit",
    "launch",
    "report",
    "config",
    "submission",
    "codepack",
    "stats",
    "capfit",
    "artifact_index",
]

# Run in a fresh interpreter: drop every way to import the real pgolf (and python-minifier), prove they are gone, then
# load the script and import every module it carries.
PROBE = """
import importlib.util, json, os, runpy, sys
sys.path = [p for p in sys.path if not os.path.exists(os.path.join(p or '.', 'pgolf'))]
sys.meta_path = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '') + type(f).__module__]
sys.modules['python_minifier'] = None
assert importlib.util.find_spec('pgolf') is None, 'pgolf is importable without the script'
script = runpy.run_path(sys.argv[1], run_name='bundle')
names, renamed = json.loads(sys.argv[2]), json.loads(sys.argv[3])
for name in script['M']:
    __import__(name)
import pgolf.pack, torch
pack, unpack = (getattr(pgolf.pack, renamed.get(n, n)) for n in ('pack', 'unpack'))
state = {'tensors': {'x': torch.arange(6, dtype=torch.int16)}, 'meta': {}, 'config': {}}
rest = unpack(pack(state))['tensors']
import pgolf.runlog, tempfile
log_path = os.path.join(tempfile.mkdtemp(), 'log.jsonl')
getattr(pgolf.runlog, renamed.get('RunLog', 'RunLog'))('probe', {}, log_path, echo=False).close()
code_version = json.loads(open(log_path).readline())['code_version']
import pgolf.scriptconfig
print(json.dumps({
    'config': script['CONFIG'],
    'full_config': pgolf.scriptconfig.full_config(script['CONFIG']),
    'carried': sorted(script['M']),
    'sources': {n: sys.modules[n].__loader__.get_source(n) for n in names},
    'loaders': sorted({type(sys.modules[n].__loader__).__name__ for n in names}),
    'json_loader': type(json.__loader__).__name__,
    'works': rest['x'].tolist(),
    'code_version': code_version,
}))
"""


@pytest.fixture(scope="module")
def modules():
    """Minifying the carried modules takes seconds: do it once and let later builds reuse it."""
    original, narrowed = C.package_modules, C.narrow_config(CONFIG, "record")
    minified = original(config=narrowed)

    def cached(d=C.PACKAGE_DIR, options=C.MINIFY_OPTIONS, config=None):
        same = d == C.PACKAGE_DIR and options == C.MINIFY_OPTIONS and config == narrowed
        return minified if same else original(d, options, config)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(C, "package_modules", cached)
        yield minified


@pytest.fixture(scope="module")
def script(modules, tmp_path_factory):
    path = tmp_path_factory.mktemp("code") / "train_gpt.py"
    C.main(["--config", json.dumps(CONFIG), "--preset", "record", "--out", str(path)])
    return path


def run_probe(script: Path, names: list, renamed: dict, cwd: Path) -> dict:
    """PROBE's findings on `script` in a fresh interpreter without pgolf (names: modules whose sources it returns)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(script), json.dumps(names), json.dumps(renamed)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_modules_import_from_memory(script, modules, tmp_path):
    renamed = C.package_renames(config=C.narrow_config(CONFIG, "record"))
    assert renamed["RunLog"] != "RunLog"  # the probe reaches the shared names by their short spelling
    out = run_probe(script, IMPORTED, renamed, tmp_path)
    assert out["loaders"] == ["_PgolfModules"]
    assert out["json_loader"] != "_PgolfModules"  # shadows nothing outside pgolf
    assert out["works"] == list(range(6))
    assert out["carried"] == sorted(modules)
    for name in IMPORTED:
        assert out["sources"][name] == modules[name][1], name
    # the config embedded sparse and filled in by the carried code: the same dataclasses, every narrowed value
    narrowed = C.narrow_config(CONFIG, "record")
    assert out["config"] == sparse_config(narrowed) and out["full_config"] == full_config(sparse_config(narrowed))
    assert out["full_config"]["eval"]["seq_len"] == 64 and out["full_config"]["eval"]["batch_tokens"] == 524288
    assert {k: b(h[k]) for h, k, b in sections(out["full_config"])} == {k: b(h[k]) for h, k, b in sections(narrowed)}
    # the run log names the sources the script carries (no files, no git there: pgolf.package_version stays out)
    digest = hashlib.sha256()
    for rel, source in sorted(modules.values()):
        digest.update(rel.encode() + source.encode())
    assert out["code_version"] == {"sources_sha256": digest.hexdigest()[:16]}
    assert "pgolf.package_version" not in out["carried"]


def test_carries_the_closure_of_run_all_only(modules):
    carried = {name.removeprefix("pgolf.") for name in modules}
    assert {
        "runall",
        "train",
        "hessians",
        "quantize",
        "pack",
        "sizecheck",
        "evaluate",
        "ttt",
        "ngram",
        "model",
        "quant.gptq",
        "codeheader",
    } <= carried
    assert not carried & set(DAG_ONLY)
    assert [p.relative_to(ROOT).as_posix() for p in C.submitted_files()] == sorted(rel for rel, _ in modules.values())
    # run_all calls the stages' functions: no command line (argparse, the stage table's arguments) ships
    imported = {
        a.name
        for _, source in modules.values()
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Import)
        for a in n.names
    }
    assert "argparse" not in imported and "--config" not in modules["pgolf.stages"][1]


def test_baked_config_is_what_run_all_reads(script):
    narrowed = C.narrow_config(CONFIG, "record")
    assert narrowed == {
        "run": CONFIG["run"],
        "hardware": CONFIG["hardware"],
        "data": {"name": "tiny"},
        "eval": {"seq_len": 64},
        "quant": {"presets": {"record": CONFIG["quant"]["presets"]["record"]}, "submission_preset": "record"},
    }
    assert C.narrow_config(narrowed, "record") == narrowed  # the rule passes the narrowed config
    # of data.hf only whether the val data has the byte sidecar, which decides whether pgolf.piece_bytes ships
    hub = {**CONFIG["data"]["hf"], "caseops": False}
    narrowed = C.narrow_config({**CONFIG, "data": {**CONFIG["data"], "hf": hub}}, "record")
    assert narrowed["data"] == {"name": "tiny", "hf": {"caseops": False}}
    assert C.narrow_config(narrowed, "record") == narrowed


def test_deterministic(modules):
    source = (ROOT / "pgolf" / "pack.py").read_text()
    preserve = C.preserved_globals({"pack": source})
    assert C.minify(source, "p", preserve) == C.minify(source, "p", preserve)
    assert list(modules) == sorted(modules) and modules["pgolf.pack"][0] == "pgolf/pack.py"
    assert C.build_script(CONFIG, "record") == C.build_script(json.loads(json.dumps(CONFIG)), "record")


def test_blind_to_other_presets_and_unread_sections(script):
    edited = json.loads(json.dumps(CONFIG))
    edited["quant"]["presets"]["wide"]["attn"]["bits"] = 7
    edited["quant"]["build"] = ["wide"]
    edited["submission"]["blurb"] = "other words"
    edited["data"]["hf"]["repo"] = "someone/else"
    assert C.build_script(edited, "record") == script.read_bytes()


def test_header_records_versions(script):
    from pgolf.codeheader import read_header

    header = read_header(script)
    assert header["python"] == ".".join(map(str, sys.version_info[:3])) and header["preset"] == "record"
    text = script.read_bytes()
    assert text.split(b"\n")[1] == b"import subprocess as s"
    stub = re.fullmatch(
        rb"t=s.run\(\('lrzip','-dq'\),input=bytes\(c\^(\d+) for c in \"\"\"(.*)\"\"\"\.encode\('latin1'\)\),"
        rb"capture_output=1,check=1\)\.stdout\.decode\(\)\.split\('\\0'\);exec\(t\[0\]\)\n",
        text.split(b"\n", 2)[2],
        re.S,
    )
    blob = ast.literal_eval('"""' + stub[2].decode("latin-1") + '"""').encode("latin-1")
    assert bytes(byte ^ int(stub[1]) for byte in blob).startswith(b"LRZI")


def test_escape_key_leaves_the_fewest_escaped_bytes():
    """XORed with the key, the blob has as few NUL, CR and backslash bytes as any key gives: an lrzip blob's NULs
    (its headers) no longer need escapes."""
    blob = bytes(40) + b"\r\\" * 3 + bytes(range(256))
    key = C.escape_key(blob)
    escaped = [sum(byte ^ k in (0, 13, 92) for byte in blob) for k in range(256)]
    assert escaped[key] == min(escaped) < escaped[0]
    assert len(C.latin1_literal(bytes(byte ^ key for byte in blob))) < len(C.latin1_literal(blob))


@pytest.mark.parametrize("case", ["all bytes", "quotes", "random"])
def test_latin1_literal_holds_any_bytes(case, tmp_path):
    """The literal, written into a latin-1 source file, reads back as exactly the bytes it was made from."""
    import random

    data = {
        "all bytes": bytes(range(256)) * 2 + b"\0" + b"01" + b"\0",
        "quotes": b'"' + b'""' + b'x"""y' + b'\\"' + b'"\r\n\r"' + b'""""',
        "random": random.Random(0).randbytes(20_000),
    }[case]
    literal = C.latin1_literal(data)
    source = f"# coding: latin-1\nimport sys\nsys.stdout.buffer.write({literal}.encode('latin1'))\n"
    (tmp_path / "lit.py").write_bytes(source.encode("latin-1"))
    out = subprocess.run([sys.executable, str(tmp_path / "lit.py")], capture_output=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data
    if case == "random":  # about 4 bytes in 256 need an escape: base85 would cost 25%
        assert len(literal.encode("latin-1")) < len(data) * 1.03


def test_entry_point_calls_run_all(tmp_path):
    pkg = tmp_path / "src" / "pgolf"
    (pkg / "inner").mkdir(parents=True)  # a folder without __init__.py becomes an empty package
    (pkg / "__init__.py").write_text('"""Docstrings go."""\n')
    (pkg / "inner" / "leaf.py").write_text("PRIVATE_NAME = 40\nVALUE = PRIVATE_NAME + 1\n")
    (pkg / "scriptconfig.py").write_text("def full_config(config):\n    return {**config, 'filled': True}\n")
    (pkg / "runall.py").write_text(
        "import argparse, json, sys\nfrom .inner.leaf import VALUE\n\n"
        "def run_all(config):\n    assert False, 'asserts are removed'\n"
        "    parser = argparse.ArgumentParser(description='a description that goes')\n"
        "    parser.add_argument('out', help='a help text that goes')\n"
        "    json.dump({'config': config, 'value': VALUE + 1}, open(parser.parse_args().out, 'w'))\n\n"
        "if __name__ == '__main__':\n    raise SystemExit('never run inside train_gpt.py')\n"
    )
    text = C.build_script(CONFIG, "wide", package_dir=pkg)
    (tmp_path / "train_gpt.py").write_bytes(text)
    proc = subprocess.run([sys.executable, "train_gpt.py", "out.json"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert result == {"config": {**sparse_config(C.narrow_config(CONFIG, "wide")), "filled": True}, "value": 42}
    modules = C.package_modules(pkg)
    # python-minifier renames the private name, codepack the one runall imports (in both modules: the script ran)
    assert C.package_renames(pkg) == {"VALUE": "A"}
    assert "PRIVATE_NAME" not in modules["pgolf.inner.leaf"][1] and "VALUE" not in modules["pgolf.runall"][1]
    assert "goes" not in modules["pgolf.runall"][1] and "never run" not in modules["pgolf.runall"][1]


def test_errors(tmp_path):
    from pgolf.codeheader import read_header

    with pytest.raises(PgolfError, match="no preset 'nope'"):
        C.narrow_config(CONFIG, "nope")
    (tmp_path / "plain.py").write_text("print(1)\n")
    with pytest.raises(PgolfError, match="not written by pgolf.codepack"):
        read_header(tmp_path / "plain.py")
    with pytest.raises(PgolfError, match="bad.py: cannot be minified"):
        C.minify("def f(:\n", "bad.py")
    (tmp_path / "pgolf").mkdir()
    (tmp_path / "pgolf" / "runall.py").write_text("def run_all(config):\n    pass\n")
    with pytest.raises(PgolfError, match="no scriptconfig.py; the submission's entry point must exist"):
        C.submitted_files(tmp_path / "pgolf")


# Each seed recipe and the record config: the options its run turns off, by the values that turn them off.
SEQ = "pgolf/seq_schedule.py"  # only #2164's recipe trains with progressive context
CKPT = "pgolf/checkpoint.py"  # no recipe saves checkpoints (train.checkpoint_minutes 0): upstream saves none
PIECES = "pgolf/piece_bytes.py"  # bytes from SentencePiece tables: only #1512's and #1572's data lacks the sidecar
OFF = {
    "pgolf/sgd_ttt.py",
    "pgolf/ngram.py",
    "pgolf/pack_shuffle.py",
    "pgolf/prune.py",
    "pgolf/quant/awq.py",
    "pgolf/window_loader.py",
    SEQ,
    CKPT,
    PIECES,
}
PARTS = "pgolf/lrzip_parts.py"  # no recipe cuts its groups (#1855's one stream per group)
PR1512 = {"pgolf/embeds.py", "pgolf/pko.py", "pgolf/qat.py", "pgolf/selfcalib.py"}  # #1512's model and calibration
ASYM = "pgolf/asym_softcap.py"  # #1923's learned logit caps (#2123, #2164)
CROSS = "pgolf/cross_document.py"  # attention across documents (#1512, #1572)
# backends only model.attention names ("auto" never picks them): no recipe does (upstream ran FlashAttention-3)
FA4, CUDNN = "pgolf/fa4.py", "pgolf/cudnn_attention.py"
WINDOW = {"pgolf/sliding_window.py", "pgolf/rope_scaling.py"}  # #1512's sliding window and longer-sequence RoPE
MODEL_OPTIONS = {ASYM, CROSS, FA4, CUDNN} | WINDOW
# #2123/#2164: LoRA TTT with the tilt, AWQ-lite, the lrzip groups and the documents loader
LORA_TILT = {
    "pgolf/sgd_ttt.py",
    "pgolf/pack_shuffle.py",
    "pgolf/prune.py",
    "pgolf/window_loader.py",
    PARTS,
    CKPT,
    PIECES,
}
# the quantizer's options, each left out where the submitted preset names its off value (a preset without the key,
# as most recipes' are, keeps the module): #1512's clip search, #1935's adaptive LQER ranks and #1512's int8 rows
# (also shipped where the model has #1019's tables)
PCT, ADAPTIVE, INT8 = "pgolf/quant/percentile_clip.py", "pgolf/quant/lqer_adaptive.py", "pgolf/quant/int8_clip.py"
PR1572_OFF = {"pgolf/ngram.py", "pgolf/prune.py", "pgolf/quant/awq.py", PARTS, SEQ, CKPT}  # SGD TTT, brotli, windows
RECIPE_DROPS = {  # OFF: LoRA TTT, no tilt, lrzip groups, no AWQ-lite, the documents loader, one sequence length;
    # none of #1512's options
    "record": OFF | PR1512 | {PARTS} | MODEL_OPTIONS | {PCT, ADAPTIVE, INT8},
    "pr1512": OFF - {"pgolf/prune.py", "pgolf/quant/awq.py", PIECES} | {PARTS, ASYM, FA4, CUDNN},  # pruned lzma
    "pr1572": PR1572_OFF | PR1512 | MODEL_OPTIONS - {CROSS},
    "pr1935": OFF | PR1512 | {PARTS} | MODEL_OPTIONS,
    "pr2123": LORA_TILT | {SEQ} | PR1512 | MODEL_OPTIONS - {ASYM},
    "pr2164": LORA_TILT | PR1512 | MODEL_OPTIONS - {ASYM} | {PCT},
}
# Import every module given in argv[1] with the ones in argv[2] unimportable (None in sys.modules: ImportError).
BLOCKED_IMPORT = """
import importlib, json, sys
for name in json.loads(sys.argv[2]):
    sys.modules[name] = None
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
"""


def recipe_config(name: str) -> dict:
    files = [ROOT / "config.yaml"] + ([] if name == "record" else [ROOT / "recipes" / f"{name}.yaml"])
    config = resolve([str(f) for f in files])
    return C.narrow_config(config, config["submission"]["preset"])


@pytest.mark.parametrize("name", sorted(RECIPE_DROPS))
def test_script_leaves_out_exactly_the_options_its_config_turns_off(name):
    config = recipe_config(name)
    full = set(closure(list(C.ENTRIES)))
    assert set(C.OUTSIDE_SCRIPT) <= full  # each one a module the closure reaches ...
    full -= set(C.OUTSIDE_SCRIPT)  # ... that no script carries
    assert set(C.OPTIONAL) <= full  # every optional module is one run_all can reach
    shipped = {p.relative_to(ROOT).as_posix() for p in C.submitted_files(config=config)}
    assert shipped == full - RECIPE_DROPS[name]
    assert {rel for rel in C.OPTIONAL if not C.needed(rel, config)} == RECIPE_DROPS[name]


@pytest.mark.parametrize("drops", sorted({tuple(sorted(d)) for d in RECIPE_DROPS.values()}), ids=str)
def test_carried_modules_import_without_the_left_out_ones(drops):
    """No carried module imports a left-out one at import time (callers import it inside the branch that runs it)."""
    carried = [C.module_name(rel) for rel in closure(list(C.ENTRIES)) if rel not in drops + C.OUTSIDE_SCRIPT]
    blocked = [C.module_name(rel) for rel in drops + C.OUTSIDE_SCRIPT]
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT, json.dumps(carried), json.dumps(blocked)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_blocking_catches_a_module_level_import(tmp_path):
    """The check above fails where a carried module imports a left-out one at the top (so it can catch one)."""
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT, '["pgolf.ttt"]', '["pgolf.bpb"]'],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "pgolf.bpb" in proc.stderr


def test_a_config_without_the_key_keeps_the_module():
    assert all(C.needed(rel, {}) for rel in C.OPTIONAL)
    assert C.needed("pgolf/ngram.py", {"eval": {"tilt": {"enabled": True}}})
    assert not C.needed("pgolf/ngram.py", {"eval": {"tilt": {"enabled": False}}})
    assert C.needed("pgolf/model.py", {"eval": {"tilt": {"enabled": False}}})  # not optional: always carried
    quant = {"presets": {"a": {"awq": {"enabled": True}}, "b": {"awq": {"enabled": False}}}}
    assert C.needed("pgolf/quant/awq.py", {"quant": {**quant, "submission_preset": "a"}})
    assert not C.needed("pgolf/quant/awq.py", {"quant": {**quant, "submission_preset": "b"}})
    # a module that several options run ships where any of them is on; an off value of another type is off too
    assert not C.needed(
        "pgolf/embeds.py", {"model": {"bigram_buckets": 0, "value_embed_layers": [], "smear_per_dim": 0}}
    )
    assert C.needed("pgolf/embeds.py", {"model": {"bigram_buckets": 0, "value_embed_layers": [3], "smear_per_dim": 0}})
    assert C.needed("pgolf/embeds.py", {"model": {"bigram_buckets": 3072, "value_embed_layers": None}})
    assert not C.needed("pgolf/qat.py", {"train": {"late_qat_threshold": 0.0}})
    assert not C.needed(SEQ, {"model": {"seq_schedule": None}}) and not C.needed(SEQ, {"model": {"seq_schedule": []}})
    assert C.needed(SEQ, {"model": {"seq_schedule": [[1024, 0.5], [2048, 1.0]]}})
    assert C.needed("pgolf/qat.py", {"train": {"late_qat_threshold": 0.15}})
    # cudnn and fa4 ship only where model.attention names them: "auto" never picks them
    for rel, name in ((CUDNN, "cudnn"), (FA4, "fa4")):
        assert C.needed(rel, {"model": {"attention": name}})
        assert not any(C.needed(rel, {"model": {"attention": other}}) for other in ("auto", "fa3", "flex", "sdpa"))
    for rel, key, on in (
        ("pgolf/sliding_window.py", "attn_window", 256),
        ("pgolf/rope_scaling.py", "rope_train_len", 1024),
    ):
        assert C.needed(rel, {"model": {key: on}}) and not C.needed(rel, {"model": {key: None}})

    # the quantizer's options ship where the submitted preset turns them on
    def preset(section, values):
        return {"quant": {"presets": {"p": {section: values}}, "submission_preset": "p"}}

    assert C.needed(PCT, preset("gptq", {"clip_percentiles": [0.999, 1.0]}))
    assert not any(C.needed(PCT, preset("gptq", {"clip_percentiles": off})) for off in (None, []))
    assert C.needed(ADAPTIVE, preset("lqer", {"adaptive": True}))
    assert not C.needed(ADAPTIVE, preset("lqer", {"adaptive": False}))
    off = {"bigram_buckets": 0, "value_embed_layers": None}
    assert C.needed(INT8, preset("embed_plain_int8", True) | {"model": off})
    assert not C.needed(INT8, preset("embed_plain_int8", False) | {"model": off})
    assert C.needed(INT8, preset("embed_plain_int8", False) | {"model": {**off, "value_embed_layers": [9, 10]}})
    # checkpoints (and resume) ship where train.checkpoint_minutes turns them on: the smoke recipe's 1.0, say
    assert C.needed(CKPT, {"train": {"checkpoint_minutes": 1.0}})
    assert not any(C.needed(CKPT, {"train": {"checkpoint_minutes": off}}) for off in (0, 0.0))
    # the SentencePiece byte tables ship where the val data may lack CaseOps' byte sidecar
    assert C.needed(PIECES, {"data": {"hf": {"caseops": False}}})
    assert not C.needed(PIECES, {"data": {"hf": {"caseops": True}}})


def test_raised_messages_keep_what_went_wrong_without_the_dag_advice():
    source = (
        "def f(p):\n    raise ValueError(f'{p}: truncated ({len(p)} bytes); re-run the pack rule ({p})')\n"
        "def g():\n    raise ValueError('lrzip: not found; install it (apt-get install lrzip)')\n"
        "def h():\n    raise ValueError('no advice here')\n"
    )
    ns = {}
    exec(C.minify(source, "m.py", preserve=["f", "g", "h"]), ns)
    for call, message in (
        (lambda: ns["f"]("x.pgrp"), "x.pgrp: truncated (6 bytes)"),
        (ns["g"], "lrzip: not found; install it (apt-get install lrzip)"),
        (ns["h"], "no advice here"),
    ):
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == message


def test_unread_assignments_and_imports_are_left_out():
    sources = {
        "pgolf/a.py": "import os, re\nfrom pathlib import Path\nUSED = 1\nUNUSED = USED + 1\nCALLS = Path('.')\n"
        "def run_all():\n    return USED + len(re.escape('x'))\n",
        "pgolf/b.py": "from .a import CALLS\n",
    }
    sources["pgolf/b.py"] += (
        "def walk(n):\n    return walk(n - 1) if n else 0\n"  # only its own body calls it
        "def count(n):\n    return count(n - 1) + 1 if n else 0\n"
        "def run_twice():\n    return count(2)\n"  # only an unused function calls it
        "def depth(n):\n    return depth(n - 1) + 1 if n else USED\n"
        "USED = depth(1)\n"
    )
    unused = C.unused_definitions(sources)
    # CALLS and USED run a call: never dropped; b's import of CALLS reads nothing
    assert unused == {"pgolf/a.py": {"UNUSED"}, "pgolf/b.py": {"CALLS", "walk", "count", "run_twice"}}
    out = C.minify(sources["pgolf/a.py"], "a.py", ["run_all"], unused["pgolf/a.py"], outside=set())
    assert "os" not in out and "UNUSED" not in out and "Path" in out
    ns = {}
    exec(out, ns)
    assert ns["run_all"]() == 2
    kept = C.minify(sources["pgolf/a.py"], "a.py", ["run_all"], unused["pgolf/a.py"])  # outside=None keeps imports
    assert "import os" in kept


def test_what_only_a_config_check_or_the_dag_advice_reads_is_left_out():
    """A name that only a `check` method, an error's advice or a `__main__` block reads goes with them."""
    sources = {
        "pgolf/k.py": "import dataclasses\nKINDS = ('a', 'b')\nRERUN = 're-run the k rule'\nHELP = 'usage'\n"
        "LIMIT = 3\n@dataclasses.dataclass\nclass Config:\n    kind: str = 'a'\n    def check(self):\n"
        "        if self.kind not in KINDS:\n            raise ValueError(f'{self.kind}: unknown')\n"
        "def run_all(n):\n    if n > LIMIT:\n        raise ValueError(f'{n} is over {LIMIT}; {RERUN}')\n"
        "    return Config()\n"
        "if __name__ == '__main__':\n    print(HELP)\n",
    }
    assert C.unused_definitions(sources) == {"pgolf/k.py": {"KINDS", "RERUN", "HELP"}}
    out = C.minify(sources["pgolf/k.py"], "k.py", ["run_all", "Config"], C.unused_definitions(sources)["pgolf/k.py"])
    ns = {}
    exec(out, ns)
    with pytest.raises(ValueError, match="^4 is over 3$"):
        ns["run_all"](4)
    assert ns["run_all"](1).kind == "a" and "re-run" not in out and "'b'" not in out


def test_what_only_a_command_line_reaches_is_left_out():
    """A plain name reaches its own module's definitions only (runall's local `files`), an attribute of a module from
    outside pgolf none (sys.argv), a top-level import only what its module or another reads, a definition's own body
    not itself; a table nobody reads goes with the class its entries build."""
    sources = {
        "pgolf/s.py": "import re\nclass Stage:\n    pass\nTABLE = {'one': Stage()}\n"
        "def argv(stage):\n    return [TABLE[stage]]\ndef files():\n    return 1\n"
        "def path(k):\n    return re.sub('x', 'y', k)\ndef add_argument(parser):\n    parser.add_argument('--x')\n",
        "pgolf/c.py": "from .s import argv, files\ndef load(text):\n    return text\ndef work(x):\n    return x + '!'\n"
        "def main(args):\n    return work(load(args))\n",
        "pgolf/runall.py": "import sys\nfrom . import c, s\ndef run_all():\n    files = sys.argv\n"
        "    return c.work(s.path(files[0]))\n",
    }
    unused = C.unused_definitions(sources)
    assert unused == {
        "pgolf/s.py": {"Stage", "TABLE", "argv", "files", "add_argument"},
        "pgolf/c.py": {"load", "main", "argv", "files"},
        "pgolf/runall.py": set(),
    }
    outside = C.reached_from_outside(sources)
    ns = {}
    exec(C.minify(sources["pgolf/s.py"], "s.py", ["path"], unused["pgolf/s.py"], outside=outside), ns)
    assert ns["path"]("axb") == "ayb" and not {"argv", "files", "TABLE", "Stage"} & set(ns)


def test_tables_keep_only_the_entries_whose_keys_the_carried_code_spells():
    sources = {
        "pgolf/t.py": "PATHS = {'a': 'x/a', 'b': 'x/b', 'c': 'x/c'}\nSTAGES = {'one': ('a',), 'two': ('b',)}\n"
        "ITERATED = {'p': 1, 'q': 2}\n"
        "def path(k):\n    return PATHS[k]\n"
        "def stage(s):\n    return [path(k) for k in STAGES[s]]\n"
        "def count():\n    return len(ITERATED)\n",
        "pgolf/r.py": "from .t import stage, count\ndef run_all():\n    return stage('one'), count()\n",
    }
    unused = C.unused_definitions(sources)
    entries = C.unread_entries(sources, unused)  # 'b' only in the dropped 'two'; ITERATED is read whole
    assert entries == {"pgolf/t.py": {"STAGES": {"two"}, "PATHS": {"b", "c"}}, "pgolf/r.py": {}}
    out = C.minify(sources["pgolf/t.py"], "t.py", ["stage", "count"], outside=set(), entries=entries["pgolf/t.py"])
    ns = {}
    exec(out, ns)
    assert ns["stage"]("one") == ["x/a"] and ns["count"]() == 2 and "x/b" not in out and "x/c" not in out


def test_config_checks_run_at_build_time_and_stay_out_of_the_script():
    source = (
        "import dataclasses\n"
        "@dataclasses.dataclass\nclass Base:\n    n: int = 1\n    def __post_init__(self):\n        self.check()\n"
        "    def check(self):\n        if self.n < 1:\n            raise ValueError('n must be positive')\n"
        "@dataclasses.dataclass\nclass Derived(Base):\n    m: int = 2\n"
        "    def check(self):\n        super().check()\n        raise ValueError('never in the script')\n"
        "    def total(self):\n        return self.n + self.m\n"
    )
    source += (
        "@dataclasses.dataclass\nclass Only:\n    def check(self):\n        pass\n"
        "def validate(c):\n    c.check()\n"
        "def maybe(c, flag):\n    if flag:\n        c.check()\n    return flag\n"
    )
    out = C.minify(source, "c.py", preserve=["Base", "Derived", "Only", "validate", "maybe"])
    ns = {}
    exec(out, ns)
    assert "check" not in out and "__post_init__" not in out
    assert ns["validate"](ns["Only"]()) is None and ns["maybe"](ns["Only"](), True)  # emptied blocks stay valid
    assert ns["Base"](n=0).n == 0 and ns["Derived"]().total() == 3  # what the DAG refuses, the script takes as is
    # ... so build_script refuses it first, with the message the stage would give
    bad = json.loads(json.dumps(CONFIG))
    bad["model"] = {"num_heads": 7}
    with pytest.raises(PgolfError, match="config model.num_heads: must divide model_dim 512"):
        C.build_script(bad, "record")
    bad = json.loads(json.dumps(CONFIG))
    bad["quant"]["presets"]["record"]["mlp"] = {"bits": 9}
    with pytest.raises(PgolfError, match="quant preset: mlp needs 2 <= bits <= 8"):
        C.build_script(bad, "record")


def test_no_config_check_reaches_the_script(modules):
    import ast

    for name, (rel, source) in modules.items():
        for node in ast.walk(ast.parse(source)):
            assert not (isinstance(node, ast.FunctionDef) and node.name == C.CHECK_METHOD), rel
            assert not (isinstance(node, ast.Attribute) and node.attr == C.CHECK_METHOD), rel


SHARING = {  # a package whose modules share names in every way codepack renames them, and in the ways it must not
    "__init__.py": "",
    "errors.py": "class PgolfError(Exception):\n    pass\n",
    "scriptconfig.py": "def full_config(config):\n    return config\n",
    "util.py": "from .errors import PgolfError\nSCALE = 3\n\n"
    "def helper(x):\n    return x * SCALE\n\n"
    "def path(key):\n    return 'p/' + key\n\n"
    "def where(key):\n    return 'w/' + key\n\n"
    "def dumps(text):\n    return '<' + text + '>'\n\n"
    "def main(argv):\n    return ['main', *argv]\n\n"
    "def positive(value):\n    if value < 0:\n        raise PgolfError(f'{value}: negative')\n    return value\n",
    "runall.py": "import json, sys\nimport pgolf.util\nfrom . import util\nfrom .util import helper, positive, where\n\n"
    "def call(module, argv):\n    return module.main(argv)\n\n"
    "def read(path):\n    return util.path(path)\n\n"
    "def locate(where):\n    return where('k')\n\n"
    "def run_all(config):\n"
    "    out = {'helper': helper(2), 'scale': pgolf.util.SCALE, 'main': call(util, ['x']), 'path': read('k'), 'where': locate(where)}\n"
    "    out['dumps'] = util.dumps(json.dumps('k'))\n"
    "    try:\n        positive(-1)\n    except Exception as e:\n"
    "        out['error'] = f'{type(e).__module__}.{type(e).__qualname__}: {e}'\n"
    "    json.dump(out, open(sys.argv[1], 'w'))\n",
}


def test_shared_names_are_renamed_consistently_and_kept_names_keep_theirs(tmp_path):
    pkg = tmp_path / "src" / "pgolf"
    pkg.mkdir(parents=True)
    for name, text in SHARING.items():
        (pkg / name).write_text(text)
    (tmp_path / "train_gpt.py").write_bytes(C.build_script(CONFIG, "record", package_dir=pkg))
    proc = subprocess.run([sys.executable, "train_gpt.py", "out.json"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out.json").read_text()) == {
        "helper": 6,
        "scale": 3,
        "main": ["main", "x"],
        "path": "p/k",
        "where": "w/k",
        "dumps": '<"k">',
        "error": "pgolf.errors.PgolfError: -1: negative",  # a traceback prints the exception's own name
    }
    # imported by name (helper, positive, PgolfError) or read as a module's attribute (SCALE, path): renamed in every
    # module (runall's parameter `path` stays: runall reads util's only as an attribute); runall spells `where` as its
    # own name (imported) and as a parameter (a caller may pass it by keyword); `main` and `dumps` are read on other
    # objects too (on a module run_all passes around as a value, and on json): all three kept
    renamed = C.package_renames(pkg)
    assert set(renamed) == {"helper", "positive", "SCALE", "PgolfError", "path"}
    modules = {name: source for name, (_, source) in C.package_modules(pkg).items()}
    util = ast.parse(modules["pgolf.util"])
    defined = {n.name for n in util.body if isinstance(n, ast.FunctionDef)} | {
        t.id for n in util.body if isinstance(n, ast.Assign) for t in n.targets
    }
    assert {renamed["helper"], renamed["positive"], renamed["SCALE"]} <= defined
    assert not {"helper", "positive"} & defined
    imports = [n for n in ast.walk(ast.parse(modules["pgolf.runall"])) if isinstance(n, ast.ImportFrom)]
    assert {(n.module, a.name) for n in imports for a in n.names} >= {
        ("util", renamed["positive"]),
        ("util", renamed["helper"]),
    }
    assert f"pgolf.util.{renamed['SCALE']}" in modules["pgolf.runall"]
    assert all(f"def {name}(" in modules["pgolf.util"] for name in ("where", "main", "dumps"))
    runall = ast.parse(modules["pgolf.runall"])
    read = {n.attr for n in ast.walk(runall) if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "util"}
    assert read == {renamed["path"], "dumps"}
    assert "class PgolfError(" in modules["pgolf.errors"]
    assert f"{renamed['PgolfError']}=PgolfError" in modules["pgolf.errors"]


def test_record_script_imports_its_modules_from_memory(tmp_path):
    """The record preset's script (the OPTIONAL modules its config turns off left out, the shared names renamed):
    every module it carries imports with pgolf itself unimportable."""
    config = C.narrow_config(resolve([str(ROOT / "config.yaml")]), "record")
    script = tmp_path / "train_gpt.py"
    script.write_bytes(C.build_script(config, "record"))
    renamed = C.package_renames(config=config)
    assert {"PgolfError", "read_json", "ModelConfig"} <= set(renamed) and not {"run_all", "main"} & set(renamed)
    out = run_probe(script, ["pgolf.runall", "pgolf.model", "pgolf.train"], renamed, tmp_path)
    modules = C.package_modules(config=config)
    assert out["carried"] == sorted(modules) and "pgolf.ngram" not in out["carried"] and out["works"] == list(range(6))


def test_attributes_of_a_name_that_is_not_always_the_module_keep_their_names():
    sources = {
        "pgolf/__init__.py": "",
        "pgolf/a.py": "X = 1\nY = 2\nZ = 3\n",
        "pgolf/b.py": "from . import a\nfrom .a import Z\n\ndef f():\n    return a.Y + Z\n\ndef g(a):\n    return a.X\n",
    }
    trees = {rel: ast.parse(source) for rel, source in sources.items()}
    # `a` is the module in f and any object in g: X and Y keep their names in both modules; Z is imported by name
    renamed = C.rename_shared(trees)
    assert set(renamed) == {"Z"} and renamed["Z"] not in ("a", "b")  # nor a module's name
    body = ast.unparse(trees["pgolf/b.py"])
    assert "return a.Y + " + renamed["Z"] in body and "return a.X" in body


LOCALS = """
import functools
SCALE = 3
HOOKS = []


def total(values, scale=2):
    running = 0
    for value in values:
        running += value * scale
    return running


def closure(values):
    count = 0

    def bump(value):
        nonlocal count
        count += value
        return count

    squares = [bump(value) * SCALE for value in values if (kept := value) > 0]
    return squares, count, kept


def shadows(values):
    SCALE = 10  # a local that hides the global of the same name
    return [SCALE * value for value in values] + [total(values, scale=1)]


def comprehension_scopes(values):
    value = 100
    inner = [value for value in values]  # the comprehension's own value
    return inner, value, {key: [key * item for item in values] for key in values}


def hook(ctx, inputs, output):
    return [ctx, inputs, output]


HOOKS.append(hook)  # called from outside by keyword


def weighted(values, weight):
    return [value * weight for value in values]


def by_strings(values):
    factor = 7
    return eval("factor") * len(values), locals()["factor"]


class Counter:
    start = 5  # a class attribute

    def __init__(self, values):
        self.values = values

    def count(self, extra):
        start = self.start + extra
        return start + len(self.values)


def main(values):
    partial = functools.partial(total, scale=5)
    counted = Counter(values).count(1)
    return [
        total(values), closure(values), shadows(values), comprehension_scopes(values), partial(values),
        weighted(values, weight=3), by_strings(values), counted,
    ]
"""


def _exec(source: str) -> dict:
    space = {}
    exec(compile(source, "<test>", "exec"), space)
    return space


def test_locals_are_renamed_alike_everywhere_and_the_code_still_runs():
    tree = ast.parse(LOCALS)
    renames = C.rename_locals({"pgolf/m.py": tree})
    renamed = ast.unparse(tree)
    before, after = _exec(LOCALS), _exec(renamed)
    assert after["main"]([1, -2, 3]) == before["main"]([1, -2, 3])
    # from outside: a parameter with a default by keyword, an escaping function's parameters by keyword
    assert after["total"]([1, 2], scale=4) == 12
    assert after["HOOKS"][0](ctx=1, inputs=2, output=3) == [1, 2, 3]
    functions = {n.name: n for n in ast.parse(renamed).body if isinstance(n, ast.FunctionDef)}
    params = {name: [a.arg for a in f.args.args] for name, f in functions.items()}
    # total and hook escape (functools.partial, HOOKS): code outside the script may call them by keyword
    assert params["total"] == ["values", "scale"] and params["hook"] == ["ctx", "inputs", "output"]
    assert {params[f][0] for f in ("closure", "shadows", "comprehension_scopes", "main")} == {
        renames["values"]
    }  # one name for the identifier in every function
    assert params["weighted"] == [renames["values"], "weight"]  # passed by keyword in the carried code
    assert "factor = 7" in renamed and "eval('factor')" in renamed  # a function reading its names by strings
    methods = {n.name: n for n in ast.walk(ast.parse(renamed)) if isinstance(n, ast.FunctionDef)}
    assert [a.arg for a in methods["count"].args.args] == [renames["self"], renames["extra"]]
    assert "start = 5" in renamed and "self.start" not in renamed and f"{renames['self']}.start" in renamed
    assert len(renames["values"]) == 1 and "running" not in renamed and "SCALE = 3" in renamed
    for name in ("kept", "count", "inner", "squares", "item"):
        assert name in renames and renames[name] != name


def test_renamed_locals_never_take_a_name_their_function_reads_otherwise():
    source = "a = 1\n\ndef f(long_name):\n    other = long_name + a\n    return [other, len([other])]\n"
    tree = ast.parse(source)
    renames = C.rename_locals({"pgolf/m.py": tree})
    assert not {"a", "len"} & set(renames.values())  # the global and the builtin f reads
    assert _exec(ast.unparse(tree))["f"](2) == [3, 1]


def test_triton_kernels_keep_their_constexpr_parameters(modules):
    """Triton makes a kernel's parameter a compile-time constant by its `tl.constexpr` annotation, read from the
    signature (tl.arange needs one): the script's kernels keep them where every other annotation goes."""

    def kernels(source):
        tree = ast.parse(source)
        jit = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and "jit" in ast.unparse(f.decorator_list)]
        return [
            [a.annotation is not None and "constexpr" in ast.unparse(a.annotation) for a in f.args.args] for f in jit
        ]

    minified = modules["pgolf.kernels"][1]
    expected = kernels((C.PACKAGE_DIR / "kernels.py").read_text())
    assert any(any(flags) for flags in expected) and kernels(minified) == expected
    others = [f for f in ast.walk(ast.parse(modules["pgolf.model"][1])) if isinstance(f, ast.FunctionDef)]
    assert not any(a.annotation for f in others for a in f.args.args)  # the rest lose theirs


def _annotated_locals(source: str) -> dict:
    """{function name: [its annotated assignments' annotations]} over a module's functions."""
    functions = [f for f in ast.walk(ast.parse(source)) if isinstance(f, ast.FunctionDef)]
    return {f.name: [ast.unparse(n.annotation) for n in ast.walk(f) if isinstance(n, ast.AnnAssign)] for f in functions}


def test_triton_kernels_keep_their_constexpr_locals(modules):
    """`half: tl.constexpr = BN // 2` makes a kernel's local a compile-time constant (tl.reshape's shape needs one):
    the script's kernels keep those annotations; other functions' annotated assignments become plain ones, and a
    dataclass's fields (class-body annotations) keep theirs."""
    source = _annotated_locals((C.PACKAGE_DIR / "kernels.py").read_text())
    minified = _annotated_locals(modules["pgolf.kernels"][1])
    assert sum(map(len, source.values())) > 0
    assert sorted(map(len, minified.values())) == sorted(map(len, source.values()))
    assert all(a.endswith(".constexpr") for annotations in minified.values() for a in annotations)
    for name in ("pgolf.train", "pgolf.model", "pgolf.ttt"):
        assert not any(_annotated_locals(modules[name][1]).values()), name
    config = ast.parse(modules["pgolf.model"][1])
    fields = [
        n for c in ast.walk(config) if isinstance(c, ast.ClassDef) for n in c.body if isinstance(n, ast.AnnAssign)
    ]
    assert len(fields) >= 40  # ModelConfig's


def test_annotated_assignments_become_plain_outside_classes_and_kernels():
    tree = ast.parse(
        "import triton\nX: int = 1\nY: int\n"
        "def f(a: int):\n    b: int = a + X\n    c: int\n    return b\n"
        "class K:\n    z: int = 2\n"
        "@triton.jit\ndef k(n: tl.constexpr):\n    h: tl.constexpr = n // 2\n"
    )
    out = ast.unparse(C._DropUnrun().visit(tree))
    assert "X = 1" in out and "Y: int" not in out and "b = a + X" in out and "c: int" not in out
    assert "z: int = 2" in out and "h: tl.constexpr = n // 2" in out and "def f(a):" in out
    assert _exec(out.replace("import triton", "").split("@triton.jit")[0])["f"](1) == 2
