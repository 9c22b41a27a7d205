"""pgolf.download against a local hub stand-in (tests/hubserver.py): the real huggingface_hub client code runs in a
subprocess (`python -m pgolf.download`, via runpy) whose HF_ENDPOINT points at the server and whose HF_HOME is a
fresh cache. The subprocess blocks `import torch`, which only the run log's version field would load (seconds per
run on 2 cores); the download itself never needs it."""

import fnmatch
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pgolf.download import HubConfig, allow_patterns
from pgolf.shards import BOS_ID, load_manifest, load_split, shard_paths, write_shard

from conftest import CANONICAL

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = CANONICAL
CASEOPS = "romeerp/parameter-golf-caseops-v1"
PLAIN = "kevclark/parameter-golf"
DOCS = "willdepueoai/parameter-golf"
SHARD_DIR = HubConfig.shard_dir
PLAIN_DIR = "datasets/datasets/fineweb10B_sp8192"
PLAIN_TOKENIZER = "datasets/tokenizers/fineweb_8192_bpe.model"
CLI = (
    "import runpy, sys; sys.modules['torch'] = None; sys.argv[0] = 'pgolf.download'; "
    "runpy.run_module('pgolf.download', run_name='__main__', alter_sys=True)"
)
DOC_LINES = [{"text": "The NASA Launch"}, {"text": "iPhone and OpenAI"}, {"text": "ünïcödé ✓"}]


def shard_bytes(tmp_path: Path, tokens) -> bytes:
    path = tmp_path / "shard.bin"
    write_shard(path, np.asarray(tokens))
    return path.read_bytes()


def fake_docs(rng, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens [BOS, ids...] per document and their sidecar byte counts (0 at BOS)."""
    tokens, counts = [], []
    for _ in range(n_docs):
        length = int(rng.integers(3, 40))
        tokens += [BOS_ID] + rng.integers(2, 8192, length).tolist()
        counts += [0] + rng.integers(1, 5, length).tolist()
    return np.array(tokens), np.array(counts)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Tokens of a small CaseOps export: 3 train shards, 1 val shard of 7 docs with its sidecar."""
    rng = np.random.default_rng(0)
    train = [fake_docs(rng, 5)[0] for _ in range(3)]
    val, counts = fake_docs(rng, 7)
    return {"train": train, "val": val, "val_bytes": counts, "tmp": tmp_path_factory.mktemp("shards")}


def repo_files(corpus, shard_dir=SHARD_DIR, tokenizer=HubConfig.tokenizer, sidecar=True, **override) -> dict:
    tmp = corpus["tmp"]
    files = {f"{shard_dir}/fineweb_train_{i:06d}.bin": shard_bytes(tmp, t) for i, t in enumerate(corpus["train"])}
    files[f"{shard_dir}/fineweb_val_000000.bin"] = shard_bytes(tmp, corpus["val"])
    if sidecar:
        files[f"{shard_dir}/fineweb_val_bytes_000000.bin"] = shard_bytes(tmp, corpus["val_bytes"])
    files[tokenizer] = TOKENIZER.read_bytes()
    files["datasets/manifest.json"] = b'{"version": 1}'
    files.update(override)
    return files


def docs_files() -> dict:
    return {"datasets/docs_selected.jsonl": "".join(json.dumps(d) + "\n" for d in DOC_LINES).encode()}


def config(source="hf_shards", **hf) -> dict:
    return {"data": {"name": "fake", "source": source, "vocab_size": 8192, "hf": {"train_shards": 2, **hf}}}


def run_download(cfg: dict, out: Path, endpoint: str, home: Path, offline=False, *extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    cmd = [sys.executable, "-c", CLI, "--config", json.dumps(cfg), "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The CLI's single error line (exit status 2, no traceback)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pgolf error")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_allow_patterns_pick_first_train_shards_val_sidecar_and_tokenizer():
    names = [f"{SHARD_DIR}/fineweb_{s}_{i:06d}.bin" for s in ("train", "val", "val_bytes") for i in range(100)]
    names += [HubConfig.tokenizer, "datasets/manifest.json", "datasets/docs_selected.jsonl"]
    fetched = lambda hub: {n for n in names if any(fnmatch.fnmatch(n, p) for p in allow_patterns(hub))}  # noqa: E731
    record = fetched(HubConfig())
    assert {n for n in record if "_train_" in n} == {f"{SHARD_DIR}/fineweb_train_{i:06d}.bin" for i in range(80)}
    assert len([n for n in record if "_val_bytes_" in n]) == len([n for n in record if "_val_0" in n]) == 100
    assert HubConfig.tokenizer in record and "datasets/manifest.json" not in record
    plain = fetched(HubConfig(train_shards=None, caseops=False))
    assert len([n for n in plain if "_train_" in n]) == 100 and not any("_val_bytes_" in n for n in plain)


def test_hf_shards_download_writes_manifest_that_validates(corpus, tmp_path):
    with HubServer({CASEOPS: repo_files(corpus)}) as hub:
        out = tmp_path / "data" / "manifest.json"
        result = run_download(config(), out, hub.url, tmp_path / "home")
        assert result.returncode == 0, result.stderr
        requested = [path for _, path in hub.requests]
    manifest = load_manifest(out)
    assert manifest["hub"]["commit"] == hub.commit(CASEOPS) and manifest["hub"]["revision"] == "main"
    assert manifest["source"] == "hf_shards" and manifest["caseops"] is True and manifest["bos_id"] == BOS_ID
    assert manifest["vocab_size"] == 8192 and manifest["val_docs"] == 7
    assert manifest["tokenizer"] == {
        "path": "tokenizer.model",
        "sha256": hashlib.sha256(TOKENIZER.read_bytes()).hexdigest(),
    }
    assert (out.parent / "tokenizer.model").read_bytes() == TOKENIZER.read_bytes()
    assert [e["path"] for e in manifest["shards"]["train"]] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    for split, expected in (("val", corpus["val"]), ("val_bytes", corpus["val_bytes"])):
        np.testing.assert_array_equal(load_split(out, split), expected)
    np.testing.assert_array_equal(load_split(out, "train"), np.concatenate(corpus["train"][:2]))
    for path, entry, tokens in zip(shard_paths(out, "train"), manifest["shards"]["train"], corpus["train"]):
        assert entry["tokens"] == len(tokens) and entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert path.stat().st_nlink >= 2  # hard-linked to the cache blob, not a second copy
    assert not any("fineweb_train_000002" in p or p.endswith("manifest.json") for p in requested)  # only what it needs
    assert not list(out.parent.glob(".*.tmp"))


def test_offline_from_filled_cache_with_server_stopped(corpus, tmp_path):
    home = tmp_path / "home"
    with HubServer({CASEOPS: repo_files(corpus)}) as hub:
        assert run_download(config(), tmp_path / "a" / "manifest.json", hub.url, home).returncode == 0
    online = load_manifest(tmp_path / "a" / "manifest.json")
    for name, offline in (("b", True), ("c", False)):  # HF_HUB_OFFLINE=1, and a hub that went away without it
        result = run_download(config(), tmp_path / name / "manifest.json", hub.url, home, offline=offline)
        assert result.returncode == 0, result.stderr
        assert load_manifest(tmp_path / name / "manifest.json") == online
    assert online["hub"]["commit"] == hub.commit(CASEOPS)


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_no_hub_and_empty_cache_gives_one_clear_message(tmp_path, offline):
    out = tmp_path / "data" / "manifest.json"
    message = error_line(run_download(config(), out, closed_port_url(), tmp_path / "home", offline=offline))
    assert CASEOPS in message and ("HF_HUB_OFFLINE=1" in message if offline else "no connection" in message)
    for hint in ("machine with network access", "hf download", "recipes/smoke.yaml", "data.source: local"):
        assert hint in message
    assert not out.exists()


def test_hf_docs_writes_docs_jsonl_online_and_offline(tmp_path):
    home, content = tmp_path / "home", docs_files()["datasets/docs_selected.jsonl"]
    with HubServer({DOCS: docs_files()}) as hub:
        out = tmp_path / "hub" / "docs.jsonl"
        result = run_download(config("hf_docs"), out, hub.url, home)
        assert result.returncode == 0, result.stderr
        assert hub.commit(DOCS) in result.stderr  # the run log records the resolved commit
    assert out.read_bytes() == content and [json.loads(line) for line in out.read_text().splitlines()] == DOC_LINES
    again = tmp_path / "offline" / "docs.jsonl"
    assert run_download(config("hf_docs"), again, hub.url, home, offline=True).returncode == 0
    assert again.read_bytes() == content


def test_plain_sp8192_repo_without_sidecar(corpus, tmp_path):
    files = repo_files(corpus, shard_dir=PLAIN_DIR, tokenizer=PLAIN_TOKENIZER, sidecar=False)
    cfg = config(repo=PLAIN, shard_dir=PLAIN_DIR, tokenizer=PLAIN_TOKENIZER, caseops=False, train_shards=None)
    with HubServer({PLAIN: files}) as hub:
        out = tmp_path / "data" / "manifest.json"
        result = run_download(cfg, out, hub.url, tmp_path / "home")
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(out)
    assert manifest["caseops"] is False and "val_bytes" not in manifest["shards"]
    assert len(manifest["shards"]["train"]) == 3 and manifest["hub"]["repo"] == PLAIN


def test_corrupt_shard_served_by_the_hub_is_named(corpus, tmp_path):
    name = f"{SHARD_DIR}/fineweb_train_000001.bin"
    files = repo_files(corpus)
    files[name] = files[name][:-2]  # one token short of what the header says
    with HubServer({CASEOPS: files}) as hub:
        out = tmp_path / "data" / "manifest.json"
        message = error_line(run_download(config(), out, hub.url, tmp_path / "home"))
    assert f"{CASEOPS}@{hub.commit(CASEOPS)} {name}: not a valid shard" in message and "does not match" in message
    assert not out.exists() and not (out.parent / "fineweb_train_000000.bin").exists()


def test_misaligned_sidecar_is_named(corpus, tmp_path):
    files = repo_files(
        corpus, **{f"{SHARD_DIR}/fineweb_val_bytes_000000.bin": shard_bytes(tmp_path, corpus["val_bytes"][:-1])}
    )
    with HubServer({CASEOPS: files}) as hub:
        message = error_line(run_download(config(), tmp_path / "data" / "manifest.json", hub.url, tmp_path / "home"))
    assert "fineweb_val_bytes_000000.bin" in message and "align 1:1" in message


@pytest.mark.parametrize(
    "source, hf, expected",
    [
        ("hf_shards", {"revision": "v9"}, "revision 'v9' not found"),
        ("hf_shards", {"train_shards": 5}, "found 3 of 5 train shards"),
        ("hf_shards", {"repo": "someone/missing"}, "check data.hf.repo"),
        ("hf_shards", {"tokenizer": "datasets/tokenizers/other.model"}, "check data.hf.tokenizer"),
        ("hf_docs", {"docs_repo": CASEOPS, "docs_file": "datasets/other.jsonl"}, "check data.hf.docs_file"),
    ],
    ids=["revision", "train_shards", "repo", "tokenizer", "docs_file"],
)
def test_bad_hub_settings_name_the_key_to_fix(corpus, tmp_path, source, hf, expected):
    with HubServer({CASEOPS: repo_files(corpus)}) as hub:
        result = run_download(config(source, **hf), tmp_path / "out" / "file", hub.url, tmp_path / "home")
    assert expected in error_line(result)
    assert not (tmp_path / "out").exists()


def test_config_yaml_mirrors_hubconfig_and_passes_the_schema_fragment():
    import dataclasses

    import jsonschema
    import yaml

    record = yaml.safe_load((ROOT / "config.yaml").read_text())
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "data_hf.schema.yaml").read_text())
    jsonschema.validate(record, schema)
    assert record["data"]["hf"] == dataclasses.asdict(HubConfig())
    with pytest.raises(jsonschema.ValidationError, match="shards_dir"):
        jsonschema.validate({"data": {"hf": {"shards_dir": "x"}}}, schema)


def test_first_download_locks_commit_and_checksums(corpus, tmp_path):
    files = repo_files(corpus)
    out, home = tmp_path / "data" / "manifest.json", tmp_path / "home"
    with HubServer({CASEOPS: files}) as hub:
        assert run_download(config(), out, hub.url, home).returncode == 0
        first = hub.commit(CASEOPS)
    lock = json.loads((out.parent / "hub-lock.json").read_text())
    fetched = [
        f"{SHARD_DIR}/fineweb_{s}.bin" for s in ("train_000000", "train_000001", "val_000000", "val_bytes_000000")
    ]
    assert lock == {
        "repo": CASEOPS,
        "revision": "main",
        "commit": first,
        "files": {n: hashlib.sha256(files[n]).hexdigest() for n in fetched + [HubConfig.tokenizer]},
    }

    # the hub's main moves to new data: a re-run (here after the manifest went away) refuses it
    moved = dict(files)
    moved[fetched[1]] = shard_bytes(tmp_path, corpus["train"][1][::-1])
    with HubServer({CASEOPS: moved}) as hub:
        out.unlink()
        message = error_line(run_download(config(), out, hub.url, home))
        assert (
            f"resolves to commit {hub.commit(CASEOPS)}, but this dataset was first downloaded from "
            f"{CASEOPS}@{first}" in message
        )
        assert f"data.hf.revision: {first}" in message and "data.hf.refresh: true" in message
        assert not out.exists() and json.loads((out.parent / "hub-lock.json").read_text()) == lock
        # accepted on purpose: the config key or the CLI flag rewrites the lock
        for cfg, extra in ((config(refresh=True), ()), (config(), ("--refresh",))):
            (out.parent / "hub-lock.json").write_text(json.dumps(lock))
            result = run_download(cfg, out, hub.url, home, False, *extra)
            assert result.returncode == 0, result.stderr
            relocked = json.loads((out.parent / "hub-lock.json").read_text())
            assert relocked["commit"] == hub.commit(CASEOPS) != first
            assert relocked["files"][fetched[1]] == hashlib.sha256(moved[fetched[1]]).hexdigest()
            assert f'"event": "hub_lock_refreshed", "from": "{first}"' in result.stderr
        assert run_download(config(), out, hub.url, home).returncode == 0  # the new lock holds


def test_a_damaged_cache_copy_at_the_locked_commit_is_refused(corpus, tmp_path):
    out, home = tmp_path / "data" / "manifest.json", tmp_path / "home"
    with HubServer({CASEOPS: repo_files(corpus)}) as hub:
        assert run_download(config(), out, hub.url, home).returncode == 0
    blob = next(p for p in (home / "hub").rglob("fineweb_train_000001.bin")).resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1  # a token id changed: header and size still pass the snapshot checks
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    assert run_download(config(), tmp_path / "again" / "manifest.json", hub.url, home, True).returncode == 0  # first
    message = error_line(run_download(config(), out, hub.url, home, True))
    assert f"{CASEOPS}@{hub.commit(CASEOPS)} {SHARD_DIR}/fineweb_train_000001.bin: sha256" in message
    assert "differs from the first download's" in message and "hub cache's copy is damaged" in message


def test_hf_docs_are_locked_too(tmp_path):
    home, out = tmp_path / "home", tmp_path / "hub" / "docs.jsonl"
    with HubServer({DOCS: docs_files()}) as hub:
        assert run_download(config("hf_docs"), out, hub.url, home).returncode == 0
    changed = {"datasets/docs_selected.jsonl": b'{"text": "other"}\n'}
    with HubServer({DOCS: changed}) as hub:
        message = error_line(run_download(config("hf_docs"), out, hub.url, home))
        assert "data.hf.docs_revision:" in message and "data.hf.refresh: true" in message
        assert run_download(config("hf_docs", refresh=True), out, hub.url, home).returncode == 0
    assert out.read_bytes() == changed["datasets/docs_selected.jsonl"]
