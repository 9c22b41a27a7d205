"""Tokenizer stage: a deterministic CaseOps BPE with the canonical id layout, or a given model validated."""

import json

import pytest
import sentencepiece as spm

from pgolf import caseops, tokenizer
from pgolf.errors import PgolfError

from conftest import CANONICAL

DOCS = [
    f"The NASA Launch {i}: OpenAI and McDonald's met in Paris; iPhone sales rose {i * 7}% in Q{i % 4 + 1}."
    for i in range(300)
] + ["Café au lait, naïve façade. 東京 and Zürich!"] * 5


def config_file(tmp_path, **data):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"data": {"source": "local", "vocab_size": 320, **data}}))
    return str(path)


def test_trained_model_has_the_caseops_layout_and_is_deterministic():
    first, second = tokenizer.train(DOCS, 320), tokenizer.train(DOCS, 320)
    assert first == second
    sp = spm.SentencePieceProcessor(model_proto=first)
    assert tokenizer.validate(sp, "trained") == {"vocab_size": 320, "byte_fallback_pieces": 256}
    assert [sp.id_to_piece(i) for i in range(8)] == ["<pad>", "<s>", "</s>", "<unk>", *caseops.OPERATORS]
    assert tokenizer.piece_types(sp, 9) == [3, 3, 3, 2, 4, 4, 4, 4, 6]  # control, unknown, user-defined, byte
    assert sp.id_to_piece(8) == "<0x00>" and sp.id_to_piece(263) == "<0xFF>"
    ids = sp.encode(caseops.encode("The NASA launch 2024"))
    assert 4 in ids and 5 in ids  # TITLE and ALLCAPS are single pieces
    assert [sp.id_to_piece(i) for i in sp.encode("2024")] == ["2", "0", "2", "4"]  # split digits


def test_cli_trains_on_local_documents(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    out = tmp_path / "data" / "tokenizer.model"
    tokenizer.main(["--config", config_file(tmp_path, local={"path": str(docs)}), "--out", str(out)])
    assert out.read_bytes() == tokenizer.train(DOCS, 320)
    capped = tmp_path / "capped.model"
    tokenizer.main(
        ["--config", config_file(tmp_path, tokenizer_train_docs=50), "--docs", str(docs), "--out", str(capped)]
    )
    assert capped.read_bytes() == tokenizer.train(DOCS[:50], 320)


def test_given_canonical_model_is_validated_and_copied(tmp_path):
    out = tmp_path / "tokenizer.model"
    tokenizer.main(["--config", config_file(tmp_path, tokenizer=str(CANONICAL)), "--out", str(out)])
    assert out.read_bytes() == CANONICAL.read_bytes()
    assert tokenizer.validate(tokenizer.load(out), out)["vocab_size"] == 8192


def test_model_without_operators_is_refused(tmp_path):
    plain = tmp_path / "plain.model"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(DOCS),
        model_prefix=str(plain.with_suffix("")),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    with pytest.raises(PgolfError, match=r"plain.model: ids 4-7 are .* not the CaseOps operators"):
        tokenizer.main(["--config", config_file(tmp_path, tokenizer=str(plain)), "--out", str(tmp_path / "t.model")])
    assert not (tmp_path / "t.model").exists()


def test_wrong_bos_is_refused(tmp_path):
    prefix = tmp_path / "bos"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(DOCS),
        model_prefix=str(prefix),
        vocab_size=300,
        model_type="bpe",
        unk_id=0,
        bos_id=2,
        eos_id=3,
        pad_id=1,
        minloglevel=2,
    )
    with pytest.raises(PgolfError, match=r"bos.model: BOS id is 2, expected 1"):
        tokenizer.validate(tokenizer.load(f"{prefix}.model"), f"{prefix}.model")


def test_too_large_vocabulary_is_refused():
    class Huge:  # the check needs only the piece count; no real 65,536-piece model is trained for it
        def get_piece_size(self):
            return 70_000

    with pytest.raises(PgolfError, match=r"x.model: vocabulary of 70,000 pieces does not fit uint16 shards"):
        tokenizer.validate(Huge(), "x.model")
    with pytest.raises(PgolfError, match=r"data.vocab_size 65,536 does not fit uint16 shards"):
        tokenizer.train(DOCS, 65_536)


def test_missing_or_broken_model_files(tmp_path):
    with pytest.raises(PgolfError, match=r"nope.model: tokenizer model not found"):
        tokenizer.load(tmp_path / "nope.model")
    broken = tmp_path / "broken.model"
    broken.write_bytes(b"not a model")
    with pytest.raises(PgolfError, match=r"broken.model: not a SentencePiece model"):
        tokenizer.load(broken)
