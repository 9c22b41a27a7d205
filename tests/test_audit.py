"""Data audit: a clean corpus passes; planted leaks and broken shards fail with the problem named."""

import json

import numpy as np
import pytest

from pgolf import audit
from pgolf.errors import PgolfError
from pgolf.shards import file_sha256, shard_name, write_shard

RNG = np.random.default_rng(0)
DOCS = [RNG.integers(2, 500, size=int(n)).tolist() for n in RNG.integers(1, 60, size=120)]


def write_dataset(folder, val, train, shard_tokens=150, vocab_size=512, sidecar=True, manifest_extra=None):
    """Shards + manifest like the tokenize stage writes them, from lists of documents (ids without BOS)."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = {}
    streams = {"val": [t for d in val for t in [1, *d]], "train": [t for d in train for t in [1, *d]]}
    if sidecar:
        streams["val_bytes"] = [0 if t == 1 else 3 for t in streams["val"]]
    for split, stream in streams.items():
        shards[split] = []
        for i, start in enumerate(range(0, len(stream), shard_tokens)):
            entry = write_shard(folder / shard_name(split, i), np.array(stream[start : start + shard_tokens]))
            shards[split].append({**entry, "path": shard_name(split, i)})
    (folder / "tokenizer.model").write_bytes(b"a stand-in: the audit reads it only for previews")
    tokenizer = {"path": "tokenizer.model", "sha256": file_sha256(folder / "tokenizer.model")}
    manifest = {
        "dataset": "t",
        "tokenizer": tokenizer,
        "vocab_size": vocab_size,
        "val_docs": len(val),
        "train_docs": len(train),
        "shards": shards,
        **(manifest_extra or {}),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"


def rewrite_shard(manifest, split, index, tokens):
    """Replace one shard and its manifest entry, as a data stage that wrote these tokens would."""
    entry = write_shard(manifest.parent / shard_name(split, index), np.asarray(tokens))
    entries = json.loads(manifest.read_text())
    entries["shards"][split][index] = {**entry, "path": shard_name(split, index)}
    manifest.write_text(json.dumps(entries))


def run(manifest, tmp_path, fraction=0.001):
    out = tmp_path / "data_audit.json"
    config = json.dumps({"audit": {"max_overlap_fraction": fraction}})
    try:
        audit.main(["--config", config, "--manifest", str(manifest), "--out", str(out)])
        return json.loads(out.read_text()), None
    except PgolfError as e:
        failed = tmp_path / "data_audit.failed.json"  # beside the output, which Snakemake deletes on failure
        assert not out.exists() and f"(report in {failed})" in str(e)
        return json.loads(failed.read_text()), str(e)


def test_clean_corpus_passes(tmp_path):
    report, error = run(write_dataset(tmp_path / "d", DOCS[:20], DOCS[20:]), tmp_path)
    assert error is None and report["passed"] and report["problems"] == []
    assert report["val"]["docs"] == 20 and report["train"]["docs"] == 100
    assert report["val"]["tokens"] == sum(len(d) + 1 for d in DOCS[:20])
    assert report["train"]["tokens"] == sum(len(d) + 1 for d in DOCS[20:])
    assert report["train"]["shards"] > 3  # documents cross shard boundaries
    assert report["overlap"] == {"val_docs": 0, "fraction": 0.0, "examples": []}
    assert report["val_bytes"] == {"present": True, "aligned": True, "bytes": 3 * sum(map(len, DOCS[:20]))}


def test_planted_overlap_is_caught_across_shard_boundaries(tmp_path):
    long_doc = list(range(2, 400))  # longer than a shard: its hash must follow it across boundaries
    val = DOCS[:20] + [long_doc]
    train = DOCS[20:60] + [DOCS[3], long_doc] + DOCS[60:]
    report, error = run(write_dataset(tmp_path / "d", val, train), tmp_path)
    assert not report["passed"]
    assert report["overlap"]["val_docs"] == 2
    assert {(e["val_doc"], e["train_doc"]) for e in report["overlap"]["examples"]} == {(3, 40), (20, 41)}
    assert "2 of 21 val documents (9.52%) also occur in train" in error and "train/val leak" in error
    report, error = run(write_dataset(tmp_path / "d", val, train), tmp_path, fraction=0.2)
    assert error is None and report["passed"] and report["overlap"]["val_docs"] == 2  # reported, below the limit
    assert not (tmp_path / "data_audit.failed.json").exists()  # a pass clears the stale failure


def test_a_prefix_is_not_an_overlap(tmp_path):
    val = [[5, 6, 7]]
    train = [[5, 6, 7, 8], [5, 6], *DOCS[:10]]
    report, error = run(write_dataset(tmp_path / "d", val, train), tmp_path)
    assert error is None and report["overlap"]["val_docs"] == 0


@pytest.mark.parametrize(
    "change, problem",
    [
        (dict(vocab_size=300), "token id 499 is outside the vocabulary (size 300)"),
        (dict(manifest_extra={"val_docs": 25}), "val: 20 BOS-delimited documents but the manifest says 25"),
    ],
)
def test_broken_datasets_fail_with_the_problem_named(tmp_path, change, problem):
    report, error = run(write_dataset(tmp_path / "d", DOCS[:20], DOCS[20:], **change), tmp_path)
    assert not report["passed"] and problem in error
    assert "data audit failed" in error and "data_audit.failed.json" in error


def test_split_without_leading_bos(tmp_path):
    manifest = write_dataset(tmp_path / "d", DOCS[:20], DOCS[20:])
    rewrite_shard(manifest, "train", 0, [7, 1, 5, 6] * 10)
    entries = json.loads(manifest.read_text())
    entries["shards"]["train"] = entries["shards"]["train"][:1]
    entries.pop("train_docs")
    manifest.write_text(json.dumps(entries))
    report, error = run(manifest, tmp_path)
    assert "the train split starts with id 7, not BOS (1)" in error


def test_sidecar_misalignment(tmp_path):
    folder = tmp_path / "d"
    manifest = write_dataset(folder, DOCS[:20], DOCS[20:])
    rewrite_shard(manifest, "val_bytes", 0, np.ones(10))
    report, error = run(manifest, tmp_path)
    assert not report["val_bytes"]["aligned"]
    assert "fineweb_val_bytes_000000.bin: 10 entries for the 150 tokens of fineweb_val_000000.bin" in error
    write_dataset(folder, [[5, 6], [7]], DOCS)  # val stream: 1 5 6 1 7
    rewrite_shard(manifest, "val_bytes", 0, [2, 1, 1, 0, 1])
    report, error = run(manifest, tmp_path)
    assert "nonzero byte counts on BOS tokens" in error


def test_corrupt_shard_names_the_file(tmp_path):
    manifest = write_dataset(tmp_path / "d", DOCS[:20], DOCS[20:])
    (tmp_path / "d" / shard_name("train", 1)).write_bytes(b"\x00" * 2000)
    with pytest.raises(PgolfError, match=r"fineweb_train_000001.bin: wrong magic 0"):
        audit.main(["--config", "{}", "--manifest", str(manifest), "--out", str(tmp_path / "a.json")])
    assert not (tmp_path / "a.json").exists()


def test_a_file_changed_after_the_manifest_is_refused(tmp_path):
    manifest = write_dataset(tmp_path / "d", DOCS[:20], DOCS[20:])
    shard = tmp_path / "d" / shard_name("train", 2)
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # one token id changed in place: header and size still fine
    shard.write_bytes(bytes(data))
    with pytest.raises(
        PgolfError,
        match=r"fineweb_train_000002.bin: sha256 .* differs from the manifest .*manifest"
        r"\.json .*changed after the data stage wrote it",
    ):
        audit.audit(manifest, audit.AuditConfig())
    write_shard(shard, np.array([1, 2, 3]))  # a valid shard of another length
    with pytest.raises(PgolfError, match=r"fineweb_train_000002.bin: 3 tokens, the manifest .* says 150"):
        audit.audit(manifest, audit.AuditConfig())
    (tmp_path / "d" / "tokenizer.model").write_bytes(b"another model")
    rewrite_shard(manifest, "train", 2, [1, 2, 3])
    with pytest.raises(PgolfError, match=r"tokenizer.model: sha256 .* differs from the manifest"):
        audit.audit(manifest, audit.AuditConfig())


def test_report_records_the_verified_bytes(tmp_path):
    manifest = write_dataset(tmp_path / "d", DOCS[:20], DOCS[20:])
    report, error = run(manifest, tmp_path)
    files = [p for p in (tmp_path / "d").iterdir() if p.suffix in (".bin", ".model")]
    assert error is None and report["checksums"] == {"verified_bytes": sum(p.stat().st_size for p in files)}
