"""Atomic, durable output: the file reaches the disk before its rename, the folder's entry after it."""

import os

import pytest

from pgolf import io
from pgolf.errors import PgolfError


def test_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    io.write_bytes(tmp_path / "out.bin", b"data")
    (_, synced), (_, src, dst), (_, folder) = events
    assert synced == src and os.path.basename(src).startswith(".out.bin.") and src.endswith(".tmp")
    assert dst == str(tmp_path / "out.bin") and folder == str(tmp_path)
    assert (tmp_path / "out.bin").read_bytes() == b"data"


def test_a_failed_write_leaves_neither_output_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with io.atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_only_the_named_outputs_temporaries(tmp_path):
    for name in (".model.pt.abc.tmp", ".model.pt.def.tmp", ".other.pt.abc.tmp", "model.pt"):
        (tmp_path / name).write_bytes(b"x")
    swept = io.sweep_temporaries(tmp_path, ["model.pt", "summary.json"])
    assert sorted(p.name for p in swept) == [".model.pt.abc.tmp", ".model.pt.def.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.abc.tmp", "model.pt"]


def test_folder_lock_names_the_holder_and_is_released(tmp_path):
    held = io.lock_folder(tmp_path, ".lock", "trainer")
    assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(PgolfError, match=rf"{tmp_path}: another trainer \(pid {os.getpid()}\) is running"):
        io.lock_folder(tmp_path, ".lock", "trainer")  # a second open file description: flock refuses it
    io.unlock_folder(held)
    assert not (tmp_path / ".lock").exists()
    io.unlock_folder(io.lock_folder(tmp_path, ".lock", "trainer"))
