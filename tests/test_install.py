"""The install script's two routes (PyPI's pinned torch, PyTorch's CPU index) and the README that documents them."""

import os
import subprocess

from conftest import ROOT

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def install_calls(tmp_path, *args):
    """The python3 calls .ci/install makes (a stub python3 records them; lrzip and chromium stubs skip apt)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "python3").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    for name in ("lrzip", "chromium"):
        (bin_dir / name).write_text("#!/bin/sh\n")
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", ".ci/install", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    return proc, log.read_text().splitlines() if log.exists() else []


def test_default_route_is_the_pinned_pypi_torch(tmp_path):
    proc, calls = install_calls(tmp_path)
    assert proc.returncode == 0, proc.stderr
    # then the probe for Triton (the stub has it, so nothing more is installed)
    assert calls == ["-m pip install -q torch==2.13.0", "-m pip install -q -e .[dev]", "-c import triton"]


def test_cpu_route_uses_pytorchs_cpu_index(tmp_path):
    proc, calls = install_calls(tmp_path, "--cpu")
    assert proc.returncode == 0, proc.stderr
    assert calls[0] == f"-m pip install -q torch==2.13.0 --index-url {CPU_INDEX}"
    (tmp_path / "bad").mkdir()
    proc, calls = install_calls(tmp_path / "bad", "--gpu")
    assert proc.returncode == 2 and "usage: bash .ci/install [--cpu]" in proc.stderr and calls == []


def test_readme_says_what_the_install_downloads():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## The DAG")[0]
    assert "bash .ci/install --cpu" in quick_start
    assert f"pip install torch==2.13.0 --index-url {CPU_INDEX}" in quick_start
    assert "CUDA build" in quick_start and "17 `nvidia-*` packages" in quick_start and "several GB" in quick_start
