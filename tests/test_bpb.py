"""Bits per byte: window tiling, the diagnostic eval against a hand computation, byte counts (LUT and sidecar)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgolf.bpb import Totals, ValData, diagnostic_eval, load_val, windows
from pgolf.dist import Dist
from pgolf.errors import PgolfError
from pgolf.piece_bytes import lut_position_bytes, sentencepiece_luts
from pgolf.shards import shard_name, write_shard

torch.set_num_threads(1)
CPU = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


@pytest.mark.parametrize(
    "n,seq_len,stride",
    [(2, 4, None), (100, 16, None), (101, 16, None), (100, 16, 5), (37, 8, 8), (500, 64, 64), (9, 4, 1)],
)
def test_windows_tile_every_target_once(n, seq_len, stride):
    spans = windows(n, seq_len, stride)
    scored = np.concatenate([np.arange(first, end) for _, first, end in spans])
    assert scored.tolist() == list(range(1, n))
    for context, first, end in spans:
        assert 0 <= context <= first - 1 and end - 1 - context <= seq_len  # inputs fit the window
        if stride is not None and context > 0:
            assert end - 1 - context == seq_len  # sliding windows carry a full context


@pytest.mark.parametrize("n,seq_len", [(40, 16), (33, 16), (49, 16), (1000, 7)])
def test_truncate_tail_keeps_whole_windows_of_targets(tmp_path, n, seq_len):
    """eval.truncate_tail as upstream's load_validation_tokens: tokens[: (N-1)//L*L + 1], every target scored."""
    rng = np.random.default_rng(n)
    tokens = rng.integers(2, 16, size=n)
    tokens[0] = 1
    tokens[rng.integers(1, n, size=n // 10)] = 1
    manifest = write_val(tmp_path, tokens, rng.integers(0, 5, size=n))
    val = load_val(manifest, truncate_seq_len=seq_len)
    kept = (n - 1) // seq_len * seq_len  # the slow definition: whole windows of targets
    assert val.tokens.tolist() == tokens[: kept + 1].tolist() and val.targets == kept
    assert val.docs == int((tokens[: kept + 1] == 1).sum())
    result = diagnostic_eval(BigramModel(), val, seq_len, 2, CPU)
    assert result["scored"] == kept
    assert load_val(manifest).targets == n - 1  # false (#2140): the tail is scored too


def test_truncate_tail_rejects_a_stream_shorter_than_a_window(tmp_path):
    with pytest.raises(PgolfError, match="eval.truncate_tail leaves nothing"):
        load_val(write_val(tmp_path, np.array([1, 5, 6]), np.zeros(3)), truncate_seq_len=4)


class BigramModel(torch.nn.Module):
    """logits depend on the input token alone, so every window layout must give the same score."""

    def __init__(self, vocab=16):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, ids, targets=None, *, reduction="mean", capture=None, adapters=None):
        logits = self.table[ids]
        if targets is None:
            return logits
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)
        return nll.view(targets.shape) if reduction == "none" else nll


def bigram_corpus(rng, vocab=16):
    docs = [np.concatenate([[1], rng.integers(2, vocab, size=int(rng.integers(1, 40)))]) for _ in range(9)]
    tokens = np.concatenate(docs).astype(np.int64)
    return ValData(tokens, rng.integers(1, 5, size=tokens.size).astype(np.int32), len(docs))


@pytest.mark.parametrize("seq_len,batch,stride", [(8, 3, None), (32, 1, None), (16, 4, 4), (300, 2, None)])
def test_diagnostic_bpb_equals_hand_computation(seq_len, batch, stride):
    model = BigramModel()
    val = bigram_corpus(np.random.default_rng(seq_len))
    logp = torch.log_softmax(model.table.detach().double(), -1).numpy()
    nats = nbytes = 0.0
    for t in range(1, val.tokens.size):  # every target, a document's closing BOS included (#1855's eval_val)
        nats -= logp[val.tokens[t - 1], val.tokens[t]]
        nbytes += val.position_bytes[t]
    bits = nats / math.log(2)
    result = diagnostic_eval(model, val, seq_len, batch, CPU, stride)
    assert result["scored"] == val.targets and result["bytes"] == nbytes
    assert result["val_bpb"] == pytest.approx(bits / nbytes, rel=1e-6)
    assert result["val_loss"] == pytest.approx(nats / val.targets, rel=1e-6)


def test_totals_reduce_to_loss_and_bpb():
    totals = Totals(torch.device("cpu"))
    totals.add(torch.tensor([1.0, 2.0]), torch.tensor([3, 1]))
    totals.add(torch.tensor([3.0]), torch.tensor([4]))
    result = totals.reduced(CPU)
    assert result == {"val_loss": 2.0, "val_bpb": pytest.approx(6 / math.log(2) / 8), "scored": 3, "bytes": 8}


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("sp")
    text = folder / "train.txt"
    lines = [
        "The quick brown fox jumps over the lazy dog.",
        "Ünïcödé façade — naïve café, 東京 and emoji 🙂!",
        "   leading spaces, tabs\tand  double  spaces",
        "numbers 12345 and symbols #$%&*",
    ] * 30
    text.write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(folder / "sp"),
        vocab_size=320,
        byte_fallback=True,
        bos_id=1,
        eos_id=-1,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    return folder / "sp.model"


def test_lut_bytes_equal_decoded_utf8_length(sp_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    docs = ["Hello world, the fox!", "naïve 東京 café 🙂 — ok", "a  b   c", "Ω≈ç√∫ rare characters ẞ", "x"]
    ids = [sp.encode(d) for d in docs]
    assert any(sp.is_byte(i) for doc in ids for i in doc)  # byte fallback is exercised
    stream = np.concatenate([np.concatenate([[1], d]) for d in ids]).astype(np.int64)
    position_bytes = lut_position_bytes(stream, sentencepiece_luts(sp_model))
    bos = np.flatnonzero(stream == 1).tolist() + [stream.size]
    for k, doc in enumerate(ids):
        assert position_bytes[bos[k] + 1 : bos[k + 1]].sum() == len(sp.decode(doc).encode("utf-8"))


def write_val(folder, tokens, sidecar=None, tokenizer="tok.model", vocab=16):
    shards = {"val": [write_shard(folder / shard_name("val", 0), tokens)]}
    if sidecar is not None:
        shards["val_bytes"] = [write_shard(folder / shard_name("val_bytes", 0), sidecar)]
    for entries in shards.values():
        for entry in entries:
            entry["path"] = entry["path"].rsplit("/", 1)[-1]
    manifest = {"dataset": "t", "tokenizer": {"path": tokenizer, "sha256": ""}, "vocab_size": vocab, "shards": shards}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder / "manifest.json"


def test_load_val_uses_the_sidecar_and_cuts_whole_documents(tmp_path):
    tokens = np.array([1, 5, 6, 1, 7, 1, 8, 9])
    sidecar = np.array([0, 2, 3, 0, 1, 0, 4, 1])
    manifest = write_val(tmp_path, tokens, sidecar)
    val = load_val(manifest)
    assert val.tokens.tolist() == tokens.tolist() and val.position_bytes.tolist() == sidecar.tolist()
    assert val.docs == 3 and val.targets == 7  # the BOS of documents 2 and 3 are targets
    cut = load_val(manifest, docs_limit=2)
    assert cut.tokens.tolist() == [1, 5, 6, 1, 7] and cut.docs == 2 and cut.position_bytes.tolist() == [0, 2, 3, 0, 1]


def test_load_val_uses_lookup_tables_without_a_sidecar(tmp_path, sp_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    (tmp_path / "tok.model").write_bytes(sp_model.read_bytes())
    ids = sp.encode("the lazy dog")
    val = load_val(write_val(tmp_path, np.array([1, *ids]), vocab=sp.get_piece_size()))
    assert val.position_bytes.sum() == len("the lazy dog")


def test_load_val_rejects_bad_streams(tmp_path):
    with pytest.raises(PgolfError, match="must start with a BOS"):
        load_val(write_val(tmp_path, np.array([5, 1, 6]), np.zeros(3)))
    with pytest.raises(PgolfError, match="sidecar has 2 entries for 3"):
        load_val(write_val(tmp_path, np.array([1, 5, 6]), np.zeros(2)))
