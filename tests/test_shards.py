"""Shards and the manifest: malformed entries, paths that leave the dataset folder, ids outside the vocabulary."""

import json

import numpy as np
import pytest

from pgolf.errors import PgolfError
from pgolf.loader import DocumentLoader
from pgolf.shards import load_manifest, load_split, read_shard, shard_name, shard_paths, tokenizer_path, write_shard


def dataset(folder, vocab_size=64):
    """Two tiny shards (val, train) and their manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = {}
    for split in ("val", "train"):
        entry = write_shard(folder / shard_name(split, 0), np.array([1, 5, 6, 7, 1, 9, 10] * 40))
        shards[split] = [{**entry, "path": shard_name(split, 0)}]
    manifest = {
        "dataset": "t",
        "tokenizer": {"path": "tokenizer.model", "sha256": "0" * 64},
        "vocab_size": vocab_size,
        "shards": shards,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"


def edited(path, change):
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda m: m["shards"]["train"][0].update(path="../../etc/passwd"),
            r"shards.train\[0\].path '../../etc/passwd' leaves",
        ),
        (lambda m: m["shards"]["train"][0].update(path="/etc/passwd"), r"shards.train\[0\].path '/etc/passwd' leaves"),
        (lambda m: m["tokenizer"].update(path="sub/../../tok.model"), r"tokenizer.path 'sub/../../tok.model' leaves"),
        (lambda m: m["shards"]["val"][0].update(path=7), r"shards.val\[0\].path 7 is not a file name"),
        (lambda m: m["shards"]["val"][0].pop("sha256"), r"shards.val\[0\] is not an object with \['path', 'tokens'"),
        (lambda m: m["shards"]["val"][0].update(tokens="280"), r"shards.val\[0\].tokens '280' is not a token count"),
        (lambda m: m["shards"]["val"].__setitem__(0, "fineweb_val_000000.bin"), r"shards.val\[0\] is not an object"),
        (lambda m: m["shards"].update(test=[]), r"shards must map splits"),
        (lambda m: m["shards"].update(val={}), r"shards.val is not a list"),
        (lambda m: m.update(vocab_size=70000), r"vocab_size 70000 is not a whole number in 1..65536"),
        (lambda m: m.update(vocab_size=True), r"vocab_size True is not"),
        (lambda m: m.update(tokenizer="tokenizer.model"), r"tokenizer is not an object with \['path', 'sha256'\]"),
        (lambda m: m.pop("shards"), r"manifest lacks \['shards'\]"),
    ],
)
def test_malformed_manifest_is_one_clear_error(tmp_path, change, message):
    manifest = edited(dataset(tmp_path / "d"), change)
    with pytest.raises(PgolfError, match=rf"manifest.json: {message}.*re-run the data stage"):
        load_manifest(manifest)
    with pytest.raises(PgolfError, match="manifest.json: "):
        shard_paths(manifest, "train")


def test_paths_stay_inside_the_dataset_folder(tmp_path):
    manifest = dataset(tmp_path / "d")
    folder = manifest.parent.resolve()
    assert shard_paths(manifest, "train") == [folder / shard_name("train", 0)]
    assert tokenizer_path(manifest) == folder / "tokenizer.model"
    edited(manifest, lambda m: m["shards"]["train"][0].update(path="sub/x.bin"))  # a subfolder is inside
    assert shard_paths(manifest, "train") == [folder / "sub" / "x.bin"]


def test_ids_outside_the_vocabulary_are_refused_when_a_shard_opens(tmp_path):
    manifest = dataset(tmp_path / "d", vocab_size=10)  # the shards hold id 10
    path = manifest.parent / shard_name("val", 0)
    assert read_shard(path).max() == 10  # without a vocabulary: the raw ids
    assert read_shard(path, 11).max() == 10
    with pytest.raises(
        PgolfError,
        match=r"fineweb_val_000000.bin: token id 10 at position 6 is outside the "
        r"vocabulary of 10",
    ):
        read_shard(path, 10)
    with pytest.raises(PgolfError, match=r"fineweb_val_000000.bin: token id 10 .* vocabulary of 10"):
        load_split(manifest, "val")  # the manifest's vocabulary
    loader = DocumentLoader([manifest.parent / shard_name("train", 0)], 64, vocab_size=10)
    with pytest.raises(PgolfError, match=r"fineweb_train_000000.bin: token id 10 .* vocabulary of 10"):
        next(loader)
    loader.close()
