import os
import py_compile
import subprocess
import sys

from pgolf import bytecode, launch


def module(tmp_path, text="X = 1\n"):
    source = tmp_path / "src" / "probe_mod.py"
    source.parent.mkdir(exist_ok=True)
    source.write_text(text)
    return source


def test_current_follows_the_source(tmp_path):
    source = module(tmp_path)
    assert not bytecode.current(str(source))  # none written yet
    py_compile.compile(str(source), doraise=True)
    assert bytecode.current(str(source))
    os.utime(source, (0, 12345))  # an image that reset the sources' times: the bytecode no longer matches
    assert not bytecode.current(str(source))
    source.write_text("X = 22\n")  # a longer source: its size differs too
    assert not bytecode.current(str(source))


def test_current_accepts_hash_based_bytecode(tmp_path):
    source = module(tmp_path)
    py_compile.compile(str(source), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    os.utime(source, (0, 12345))
    assert bytecode.current(str(source))


def test_current_ignores_a_prefix_set_in_this_process(tmp_path, monkeypatch):
    source = module(tmp_path)
    py_compile.compile(str(source), doraise=True)
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path / "elsewhere"))
    assert bytecode.current(str(source))
    assert sys.pycache_prefix == str(tmp_path / "elsewhere")


def test_child_env_is_unchanged_where_torch_has_current_bytecode(tmp_path, monkeypatch):
    monkeypatch.setattr(bytecode, "current", lambda source: True)
    base = {"PYTHONDONTWRITEBYTECODE": "1", "A": "b"}
    assert bytecode.child_env(tmp_path / "cache", base) == base


def test_child_env_keeps_a_prefix_the_user_set(tmp_path, monkeypatch):
    monkeypatch.setattr(bytecode, "current", lambda source: False)
    base = {"PYTHONPYCACHEPREFIX": "/mine"}
    assert bytecode.child_env(tmp_path / "cache", base) == base


def test_child_writes_and_rereads_its_bytecode_under_the_cache(tmp_path, monkeypatch):
    """Where torch's bytecode cannot serve, a child writes its modules' bytecode under the cache even with
    PYTHONDONTWRITEBYTECODE set, and the next child reads it from there instead of compiling the source."""
    monkeypatch.setattr(bytecode, "current", lambda source: False)
    source = module(tmp_path)
    base = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(source.parent)}
    base.pop("PYTHONPYCACHEPREFIX", None)
    env = bytecode.child_env(tmp_path / "cache", base)
    assert "PYTHONDONTWRITEBYTECODE" not in env
    prefix = tmp_path / "cache" / bytecode.FOLDER
    assert env["PYTHONPYCACHEPREFIX"] == str(prefix)
    report = "import importlib.util as u, probe_mod; print(u.cache_from_source(probe_mod.__file__))"
    first = subprocess.run([sys.executable, "-c", report], env=env, capture_output=True, text=True, check=True)
    cached = first.stdout.strip()
    assert cached.startswith(str(prefix)) and os.path.exists(cached)
    assert not (source.parent / "__pycache__").exists()  # nothing beside the installed source
    # the second child loads the cached file: make its code differ from the source's to tell which one ran
    compiled = tmp_path / "other.py"
    compiled.write_text("X = 2\n")
    py_compile.compile(str(compiled), cfile=cached, doraise=True)
    data = bytearray(open(cached, "rb").read())
    stat = os.stat(source)
    data[8:16] = (int(stat.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little") + stat.st_size.to_bytes(4, "little")
    open(cached, "wb").write(bytes(data))
    second = subprocess.run(
        [sys.executable, "-c", "import probe_mod; print(probe_mod.X)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert second.stdout.strip() == "2"


def test_launch_gives_a_stage_with_a_compile_cache_its_bytecode_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(bytecode, "current", lambda source: False)
    stage = ["-m", "pgolf.train", "--out-dir", "x", "--compile-cache", str(tmp_path / "cc")]
    env = launch.stage_env(stage, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "PGOLF_LAUNCHED": "1", "PYTHONPYCACHEPREFIX": str(tmp_path / "cc" / "bytecode")}
    assert launch.stage_env(stage[:4], {"PATH": "/bin"}) == {"PATH": "/bin", "PGOLF_LAUNCHED": "1"}
