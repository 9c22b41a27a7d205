"""The code version a run log embeds: the sources' hash, the git commit, and whether the sources differ from it."""

import subprocess

from pgolf import package_version, runlog


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)  # fmt: skip


def test_code_version_says_when_the_sources_are_not_the_commits(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "stage.py").write_text("STEPS = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "one")
    monkeypatch.setattr(package_version, "PACKAGE_DIR", package)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip

    clean = runlog.code_version()
    assert clean["git_commit"] == head and clean["git_dirty"] is False

    (package / "stage.py").write_text("STEPS = 2\n")
    edited = runlog.code_version()
    assert edited["git_dirty"] is True and edited["git_commit"] == head
    assert edited["sources_sha256"] != clean["sources_sha256"]

    (package / "stage.py").write_text("STEPS = 1\n")
    (package / "new_stage.py").write_text("")  # a file the commit lacks, as in a copy whose .git lags
    assert runlog.code_version()["git_dirty"] is True


def test_code_version_without_git_has_only_the_hash(tmp_path, monkeypatch):
    (tmp_path / "stage.py").write_text("STEPS = 1\n")
    monkeypatch.setattr(package_version, "PACKAGE_DIR", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert set(runlog.code_version()) == {"sources_sha256"}
