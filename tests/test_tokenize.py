"""Tokenize stage: upstream's ids and byte sidecar exactly, shard and manifest contracts, any worker count."""

import gzip
import json

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf import caseops, tokenizer
from pgolf import tokenize as tok
from pgolf.errors import PgolfError
from pgolf.shards import BOS_ID, file_sha256, load_split, read_shard

from conftest import CANONICAL, GOLDEN

# Simple texts (ASCII, single spaces) so that decoding the shards gives the documents back exactly.
DOCS = [
    f"Doc {i}: The NASA team met OpenAI in Paris on day {i * 13} and wrote {'x' * (i % 9 + 1)} notes."
    for i in range(240)
]


@pytest.fixture(scope="module")
def canonical():
    return tokenizer.load(CANONICAL)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    path.write_bytes(tokenizer.train(DOCS, 320))
    return path


def test_golden_documents_match_upstream_ids_and_bytes(canonical):
    rows = [json.loads(line) for line in gzip.open(GOLDEN, "rt", encoding="utf-8")]
    assert len(rows) == 322
    fast = 0
    for row in rows:
        ids, counts = tok.tokenize_doc(canonical, row["text"])
        assert ids.tolist() == row["ids"], row["text"][:80]
        assert counts.tolist() == row["bytes"], row["text"][:80]
        data = row["transformed"].encode()
        assert tok._general_sidecar(canonical, data).tolist() == row["bytes"]
        fast += tok._fast_sidecar(tok.piece_table(canonical), data, row["ids"], ids) is not None
    assert 0 < fast < len(rows)  # both sidecar paths are exercised by the golden set


def assert_paths_agree(sp, text):
    data = caseops.encode_utf8(text.encode())
    id_list = sp.encode(data)
    fast = tok._fast_sidecar(tok.piece_table(sp), data, id_list, np.asarray(id_list, dtype=np.int32))
    general = tok._general_sidecar(sp, data)
    assert len(general) == len(id_list)
    if fast is not None:
        assert fast.tolist() == general.tolist(), repr(text)
    ids, counts = tok.tokenize_doc(sp, text)
    assert ids.tolist() == id_list and counts.tolist() == general.tolist()
    return fast is not None


# Whitespace runs, operators, letters of both cases, NFKC-changing, combining, control and unknown characters.
awkward = st.text(
    alphabet=st.one_of(
        st.sampled_from(
            list("aAbZ  \t\n\r\x0b\x0c\x00\x01.,'") + list(caseops.OPERATORS) + list("éé\u00a0\u2009ﬁＨ²🚀東\u200b▁İß")
        ),
        st.characters(codec="utf-8"),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(awkward)
def test_fast_sidecar_equals_the_offsets_path(canonical, text):
    assert_paths_agree(canonical, text)


def test_fast_path_covers_ordinary_text(canonical):
    texts = ["The NASA Launch", "tab\tSeparated\n\nParagraphs  and  spaces", "Café 東京 🚀 ok", f"lit{caseops.ESC}eral"]
    assert all(assert_paths_agree(canonical, t) for t in texts)
    docs = [json.loads(line)["text"] for line in gzip.open(GOLDEN, "rt", encoding="utf-8")][-150:]  # web text
    assert sum(assert_paths_agree(canonical, d) for d in docs) >= 0.9 * len(docs)


def config(tmp_path, **data):
    docs = tmp_path / "docs.jsonl"
    if not docs.exists():
        docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    values = {"name": "t", "source": "local", "local": {"path": str(docs)}, "val_docs": 40, "shard_tokens": 700}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"data": {**values, **data}}))
    return str(path)


def run(tmp_path, small_model, folder="data", workers=1, **data):
    out = tmp_path / folder / "manifest.json"
    model = out.parent / "tokenizer.model"
    out.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(small_model.read_bytes())
    args = ["--config", config(tmp_path, **data), "--tokenizer", str(model), "--out", str(out)]
    tok.main(args + ["--workers", str(workers)])
    return out


def test_shards_sidecar_and_manifest(tmp_path, small_model, monkeypatch):
    monkeypatch.setattr(tok, "CHUNK_CHARS", 500)  # many chunks, so ordering across tasks is exercised
    out = run(tmp_path, small_model)
    manifest = json.loads(out.read_text())
    sp = spm.SentencePieceProcessor(model_file=str(small_model))
    assert manifest["tokenizer"] == {"path": "tokenizer.model", "sha256": file_sha256(small_model)}
    assert (manifest["dataset"], manifest["source"], manifest["vocab_size"]) == ("t", "local", 320)
    assert (manifest["val_docs"], manifest["train_docs"], manifest["bos_id"], manifest["caseops"]) == (40, 200, 1, True)
    for split, entries in manifest["shards"].items():
        for entry in entries:
            path = out.parent / entry["path"]
            assert "/" not in entry["path"] and file_sha256(path) == entry["sha256"]
            assert read_shard(path).size == entry["tokens"]
        assert all(e["tokens"] == 700 for e in entries[:-1]) and 0 < entries[-1]["tokens"] <= 700
    assert len(manifest["shards"]["train"]) > 2

    expected = {"val": [], "val_bytes": [], "train": []}
    for i, doc in enumerate(DOCS):
        ids, counts = tok.tokenize_doc(sp, doc)
        split = "val" if i < 40 else "train"
        expected[split] += [BOS_ID, *ids.tolist()]
        if split == "val":
            expected["val_bytes"] += [0, *counts.tolist()]
            assert sum(counts) == len(doc.encode())  # simple text: every byte lands on exactly one token
    for split, tokens in expected.items():
        assert load_split(out, split).tolist() == tokens
    assert 2 not in expected["train"] + expected["val"]  # no EOS

    train = load_split(out, "train")
    docs = np.split(train, np.flatnonzero(train == BOS_ID)[1:])
    assert [caseops.decode(sp.decode(d[1:].tolist())) for d in docs] == DOCS[40:]


def test_any_worker_count_gives_identical_files(tmp_path, small_model, monkeypatch):
    monkeypatch.setattr(tok, "CHUNK_CHARS", 500)
    one = run(tmp_path, small_model, "one", workers=1).parent
    three = run(tmp_path, small_model, "three", workers=3).parent
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in three.iterdir()) and len(names) > 5
    assert all((one / n).read_bytes() == (three / n).read_bytes() for n in names)


def test_stale_shards_are_removed(tmp_path, small_model):
    folder = tmp_path / "data"
    folder.mkdir()
    stale = [folder / "fineweb_train_000099.bin", folder / "fineweb_val_bytes_000007.bin"]
    for path in stale:
        path.write_bytes(b"old")
    (folder / "notes.txt").write_text("kept")
    run(tmp_path, small_model, shard_tokens=100_000)
    assert not any(p.exists() for p in stale)
    assert (folder / "notes.txt").exists()
    assert sorted(p.name for p in folder.glob("fineweb_*")) == [
        "fineweb_train_000000.bin",
        "fineweb_val_000000.bin",
        "fineweb_val_bytes_000000.bin",
    ]


def test_val_docs_beyond_the_corpus_is_an_error_and_leaves_nothing(tmp_path, small_model):
    with pytest.raises(PgolfError) as err:
        run(tmp_path, small_model, val_docs=240)
    message = str(err.value)
    assert "docs.jsonl: holds 240 documents" in message and "lower data.val_docs" in message
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["tokenizer.model"]


def test_missing_input_and_bad_tokenizer(tmp_path, small_model):
    with pytest.raises(PgolfError, match=r"/nope/docs.jsonl: document file not found"):
        run(tmp_path, small_model, local={"path": "/nope/docs.jsonl"})
    assert not (tmp_path / "data" / "manifest.json").exists()
    plain = tmp_path / "plain"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(DOCS), model_prefix=str(plain), vocab_size=300, model_type="bpe", minloglevel=2
    )
    with pytest.raises(PgolfError, match=r"plain.model: .*not the CaseOps operators"):
        tok.main(["--config", config(tmp_path), "--tokenizer", f"{plain}.model", "--out", str(tmp_path / "m.json")])


def test_tokenizer_outside_the_dataset_folder_is_refused(tmp_path, small_model):
    elsewhere = tmp_path / "elsewhere" / "tokenizer.model"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(small_model.read_bytes())
    out = tmp_path / "data" / "manifest.json"
    with pytest.raises(PgolfError, match=r"elsewhere/tokenizer.model: the tokenizer must lie in the dataset folder"):
        tok.main(["--config", config(tmp_path), "--tokenizer", str(elsewhere), "--out", str(out)])
    assert not out.exists()
