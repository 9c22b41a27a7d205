"""README.md's own commands, as a reader runs them: after the smoke run the CPU ones run as written, the GPU and
SLURM ones plan (`-n`); install, conda and test-suite commands are named as skipped."""

import json
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, copy_workflow

pytestmark = pytest.mark.smoke

# Commands a test cannot run here, each with the reason.
SKIPPED = {
    "bash .ci/install": "installs packages (tests/test_install.py checks its pip calls)",
    "python -m pytest": "the suite itself",
    "conda ": "needs conda (CI has pip only)",
    "snakemake --sdm conda": "needs conda",
    "bash bench/prepare.sh": "downloads the bench corpus (the plan below gets stand-in files)",
}


def readme_commands() -> list[str]:
    """Every shell command in README.md: the lines of ```bash blocks and the inline `snakemake ...` spans, each
    `a && b` split in two, comments dropped, in reading order."""
    text = (ROOT / "README.md").read_text()
    found = []
    for match in re.finditer(r"```bash\n(.*?)```|`((?:bash \S+ && )?snakemake [^`]+)`", text, re.S):
        lines = match[1].splitlines() if match[1] is not None else [" ".join(match[2].split())]
        for line in lines:
            line = re.sub(r"\s+#.*$", "", line).strip()
            found += [part.strip() for part in line.split(" && ") if part.strip()]
    return found


def classify(command: str) -> str:
    if any(command.startswith(prefix) for prefix in SKIPPED):
        return "skip"
    if not command.startswith("snakemake") or "recipes/smoke.yaml" in command:
        return "run"  # a CPU command of the smoke story, run as written
    return "plan"  # the record recipe, a GPU or SLURM profile: planned only


def test_readme_commands_are_found_and_classified():
    commands = readme_commands()
    kinds = {c: classify(c) for c in commands}
    assert "snakemake --cores 2 --configfile recipes/smoke.yaml" in kinds
    assert kinds["snakemake --report report.html --configfile recipes/smoke.yaml"] == "run"
    assert kinds["snakemake --workflow-profile profiles/slurm"] == "plan"
    assert any(c.startswith("printf ") for c in commands)


def run(workdir, command, plan):
    words = shlex.split(command)
    if words[0] == "snakemake":
        words = [
            sys.executable,
            "-m",
            "snakemake",
            "--nolock",
            *words[1:],
            *(["-n"] if plan and "-n" not in words else []),
        ]
        return subprocess.run(
            words, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
        )
    return subprocess.run(
        ["bash", "-c", command], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )


def test_readme_commands_run_after_the_smoke_run(smoke_run, tmp_path):
    done = tmp_path / "done"
    shutil.copytree(smoke_run, done, symlinks=True)
    (tmp_path / "fresh").mkdir()
    fresh = copy_workflow(tmp_path / "fresh")
    (fresh / "bench/data").mkdir(parents=True)  # what bench/prepare.sh downloads, as empty stand-ins
    (fresh / "bench/data/bench-docs.parquet").touch()
    (fresh / "bench/data/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model").touch()
    ran = []
    for command in readme_commands():
        kind = classify(command)
        if kind == "skip":
            continue
        proc = run(done if kind == "run" else fresh, command, plan=kind == "plan")
        assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-4000:]}"
        ran.append(command)
    assert (done / "report.html").is_file() and len(ran) >= 8
    size = json.loads((done / "results/smoke/seed1/quant/awq/size.json").read_text())  # the overlay's "does it fit?"
    assert size["total_bytes"] < size["cap_bytes"]
