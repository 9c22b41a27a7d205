"""Byte counts per val target for data without the CaseOps byte sidecar (`data.hf.caseops: false`, such as
kevclark/parameter-golf's SP8192 shards): SentencePiece lookup tables, the UTF-8 bytes of each piece without its
leading "▁", plus one for that "▁" unless the token before it is a boundary (control, unknown or unused).

pgolf.bpb imports this module only for such data, so a script whose data has the sidecar (the record's) leaves it
out (pgolf.codepack.OPTIONAL).
"""

import numpy as np

from .errors import PgolfError
from .shards import load_manifest, tokenizer_path


def sentencepiece_luts(model_path):
    """Per token id: UTF-8 bytes of the piece without its leading "▁", whether it has one, whether it is a boundary."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    vocab = sp.get_piece_size()
    base = np.zeros(vocab, dtype=np.int32)
    leading_space = np.zeros(vocab, dtype=bool)
    boundary = np.zeros(vocab, dtype=bool)
    for i in range(vocab):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            boundary[i] = True
        elif sp.is_byte(i):
            base[i] = 1
        else:
            piece = sp.id_to_piece(i)
            leading_space[i] = piece.startswith("\u2581")
            base[i] = len(piece[1:].encode() if leading_space[i] else piece.encode())
    return base, leading_space, boundary


def lut_position_bytes(tokens: np.ndarray, luts) -> np.ndarray:
    """Bytes of the target at each position given the token before it (position 0 has no predecessor)."""
    base, leading_space, boundary = luts
    tokens = np.asarray(tokens, dtype=np.int64)
    out = base[tokens].astype(np.int32)
    out[1:] += (leading_space[tokens[1:]] & ~boundary[tokens[:-1]]).astype(np.int32)
    out[0] = 0
    return out


def tokenizer_position_bytes(manifest_path, tokens: np.ndarray) -> np.ndarray:
    """lut_position_bytes with the tables of the manifest's tokenizer, which must hold its vocabulary."""
    path = tokenizer_path(manifest_path)
    if not path.exists():
        raise PgolfError(f"{path}: tokenizer not found; re-run the data stage that writes it")
    vocab = load_manifest(manifest_path)["vocab_size"]
    luts = sentencepiece_luts(path)
    if luts[0].size != vocab:
        raise PgolfError(f"{path}: {luts[0].size} pieces but the manifest says vocab_size {vocab}; re-tokenize")
    return lut_position_bytes(tokens, luts)
