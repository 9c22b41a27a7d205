"""Train the CaseOps SentencePiece BPE tokenizer, or validate a given one (docs/record-stack.md §2.3).

    python -m pgolf.tokenizer --config CFG --out resources/data/<ds>/tokenizer.model [--docs PATH]

With `data.tokenizer` set, that model is checked (the four CaseOps operators at ids 4-7, BOS = 1, a
vocabulary below 65,536) and copied to --out. Otherwise a BPE model of `data.vocab_size` pieces is trained
on the CaseOps-transformed documents (the first `data.tokenizer_train_docs`, or all) with the settings of
the canonical tokenizer's trainer spec; SentencePiece's defaults cover the rest, as they did upstream
(e.g. documents over 4,192 bytes are left out of training). Training is deterministic: a fixed seed.
"""

import argparse
import io
import itertools
import os
from pathlib import Path

from . import caseops
from .cli import doc_summary, run_cli
from .errors import PgolfError
from .io import write_bytes
from .runlog import RunLog
from .sources import data_config, iter_documents
from .stageconfig import load_stage_config

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
OPERATOR_IDS = range(4, 8)  # user-defined symbols U+E001..U+E004, right after the four special pieces
MAX_VOCAB = 1 << 16  # token ids are stored as uint16
SEED = 1337
USER_DEFINED = 4  # ModelProto.SentencePiece.Type

# Non-default trainer settings of fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model (its trainer spec).
TRAINER_SETTINGS = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    hard_vocab_limit=False,
    pad_id=PAD_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    unk_id=UNK_ID,
    user_defined_symbols=list(caseops.OPERATORS),
)


def load(path):
    """A SentencePieceProcessor for a model file, with a clear error for anything else."""
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path}: tokenizer model not found; run the tokenizer stage or fix data.tokenizer")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise PgolfError(f"{path}: not a SentencePiece model ({e}); point data.tokenizer at a .model file") from None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _fields(data: bytes):
    """(field number, value) of a protobuf message; enough wire format for ModelProto's pieces."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, value


def piece_types(sp, count: int) -> list[int]:
    """Types of the first `count` pieces, read from the serialized model (the Python API has no is_user_defined)."""
    types = []
    for number, piece in _fields(sp.serialized_model_proto()):
        if number == 1:  # ModelProto.pieces
            types.append(dict(_fields(piece)).get(3, 1))  # SentencePiece.type, NORMAL when absent
            if len(types) == count:
                break
    return types


def validate(sp, path) -> dict:
    """Check the CaseOps id layout; return a summary for the log."""
    vocab = sp.get_piece_size()
    if vocab >= MAX_VOCAB:
        raise PgolfError(
            f"{path}: vocabulary of {vocab:,} pieces does not fit uint16 shards (max 65,535); "
            "train a smaller tokenizer (data.vocab_size)"
        )
    if sp.bos_id() != BOS_ID:
        raise PgolfError(
            f"{path}: BOS id is {sp.bos_id()}, expected {BOS_ID} (document boundaries rely on it); "
            "train the tokenizer with bos_id=1 (python -m pgolf.tokenizer without data.tokenizer)"
        )
    found = [sp.id_to_piece(i) if i < vocab else None for i in OPERATOR_IDS]
    types = piece_types(sp, OPERATOR_IDS.stop)[OPERATOR_IDS.start :]
    if found != list(caseops.OPERATORS) or types != [USER_DEFINED] * len(OPERATOR_IDS):
        raise PgolfError(
            f"{path}: ids 4-7 are {found}, not the CaseOps operators U+E001..U+E004 as user-defined symbols; "
            "use a CaseOps tokenizer (e.g. fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model) or "
            "leave data.tokenizer null to train one"
        )
    return {"vocab_size": vocab, "byte_fallback_pieces": sum(sp.is_byte(i) for i in range(vocab))}


def train(documents, vocab_size: int) -> bytes:
    """Serialized model trained on the CaseOps transform of `documents` (an iterable of strings)."""
    import sentencepiece as spm

    if vocab_size >= MAX_VOCAB:
        raise PgolfError(f"data.vocab_size {vocab_size:,} does not fit uint16 shards; choose at most 65,535")
    spm.set_random_generator_seed(SEED)
    model = io.BytesIO()
    transformed = (caseops.encode(doc) for doc in documents)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=transformed,
            model_writer=model,
            vocab_size=vocab_size,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
            **TRAINER_SETTINGS,
        )
    except RuntimeError as e:
        raise PgolfError(
            f"SentencePiece training failed ({e}); with few documents lower data.vocab_size or add documents"
        ) from None
    return model.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pgolf.tokenizer", description=doc_summary(__doc__))
    parser.add_argument("--config", required=True, help="resolved config (JSON text or file) with `data`")
    parser.add_argument("--out", required=True, help="resources/data/<ds>/tokenizer.model")
    parser.add_argument("--docs", help="document file to train on instead of the configured source")
    args = parser.parse_args(argv)
    config = load_stage_config(args.config)
    cfg = data_config(config)
    log = RunLog("tokenizer", config)
    if cfg.tokenizer:
        sp = load(cfg.tokenizer)
        summary = validate(sp, cfg.tokenizer)
        model = Path(cfg.tokenizer).read_bytes()
        log.write({"event": "given", "path": cfg.tokenizer, **summary})
    else:
        docs = itertools.islice(iter_documents(cfg, args.docs), cfg.tokenizer_train_docs)
        model = train(docs, cfg.vocab_size)
        import sentencepiece as spm

        summary = validate(spm.SentencePieceProcessor(model_proto=model), args.out)
        log.write({"event": "trained", **summary})
    write_bytes(args.out, model)
    log.write({"event": "done", "out": args.out, "bytes": len(model)})


if __name__ == "__main__":
    run_cli(main)
