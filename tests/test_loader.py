"""The training loaders. documents: BOS-aligned spans, the same global batch for every world size, resumable
positions, shard changes and wrap-around, clear errors. shuffled: #1572's windows, draw for draw those of a plain
transcription of its ShuffledSequenceLoader, on one and two ranks, resumable."""

import numpy as np
import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.loader import CHUNKS, DocumentLoader, accum_steps, start_position
from pgolf.shards import BOS_ID, HEADER_BYTES, write_shard
from pgolf.window_loader import WindowLoader

BATCH = CHUNKS * 16  # 8 chunks of 16 tokens (+1 target each): spans of 136 tokens


def make_shards(tmp_path, lengths, seed=0):
    """Shards of documents with random lengths; token value = 2 + global position, so a batch shows where it came
    from. `lengths` = tokens per shard."""
    rng = np.random.default_rng(seed)
    paths, start = [], 0
    for i, n in enumerate(lengths):
        tokens = 2 + np.arange(start, start + n) % 60000
        doc_starts = np.cumsum(rng.integers(5, 60, size=n))
        tokens[doc_starts[doc_starts < n]] = BOS_ID
        if i == 0:
            tokens[:3] = [7, 8, BOS_ID]  # a document fragment before the first BOS is skipped
        paths.append(tmp_path / f"fineweb_train_{i:06d}.bin")
        write_shard(paths[-1], tokens)
        start += n
    return paths


def take(loader, n):
    try:
        return [next(loader) for _ in range(n)]
    finally:
        loader.close()


def test_spans_start_at_bos_and_are_contiguous(tmp_path):
    paths = make_shards(tmp_path, [2000, 2000])
    batches = take(DocumentLoader(paths, BATCH), 6)
    for rows in batches:
        assert rows.shape == (CHUNKS, BATCH // CHUNKS + 1) and rows.dtype == torch.int64
        assert rows[0, 0] == BOS_ID
        flat = rows.reshape(-1)
        body = flat[flat != BOS_ID]
        assert torch.all(body[1:] > body[:-1])  # one contiguous, increasing span (BOS tokens aside)
    assert batches[0][0, 1] != 7  # the fragment before the shard's first BOS is never read


@pytest.mark.parametrize("world", [2, 4, 8])
def test_every_world_size_reads_the_same_global_batch(tmp_path, world):
    paths = make_shards(tmp_path, [3000, 1500, 2500])
    single = take(DocumentLoader(paths, BATCH), 12)
    per_rank = [take(DocumentLoader(paths, BATCH, world=world, rank=r), 12) for r in range(world)]
    accum = accum_steps(world)
    for step, rows in enumerate(single):
        for r in range(world):
            assert per_rank[r][step].shape == (accum, BATCH // CHUNKS + 1)
            for k in range(accum):  # rank r's micro-step k reads chunk k * world + r
                assert torch.equal(per_rank[r][step][k], rows[k * world + r])


def test_resume_from_position_continues_the_stream(tmp_path):
    paths = make_shards(tmp_path, [1200, 900, 1500])
    stream = take(DocumentLoader(paths, BATCH), 40)  # several epochs of this small corpus
    loader = DocumentLoader(paths, BATCH)
    head = [next(loader) for _ in range(28)]
    position = loader.state_dict()
    loader.close()
    tail = take(DocumentLoader(paths, BATCH, position=position), 12)
    for a, b in zip(stream, head + tail):
        assert torch.equal(a, b)
    assert position["epoch"] >= 1  # wrapped around the corpus by step 28


def test_span_that_does_not_fit_moves_to_the_next_shard(tmp_path):
    paths = make_shards(tmp_path, [300, 400])
    loader = DocumentLoader(paths, BATCH)
    seen = []
    for _ in range(5):
        next(loader)
        seen.append(loader.state_dict())
    loader.close()
    assert [p["shard"] for p in seen[:2]] == [0, 0]
    assert all(p["offset"] <= n for p, n in zip(seen, [300] * 5) if p["shard"] == 0)
    assert any(p["shard"] == 1 for p in seen)
    assert any(p["epoch"] == 1 for p in seen)


def test_errors(tmp_path):
    paths = make_shards(tmp_path, [100])
    with pytest.raises(PgolfError, match="no train shard holds"):
        take(DocumentLoader(paths, BATCH), 1)
    with pytest.raises(PgolfError, match="multiple of 8"):
        DocumentLoader(paths, 100)
    with pytest.raises(PgolfError, match="does not divide 8"):
        DocumentLoader(paths, BATCH, world=3)
    with pytest.raises(PgolfError, match="no train shards"):
        DocumentLoader([], BATCH)


# --- the shuffled loader ----------------------------------------------------------------------------------------
SEQ = 16
WINDOW_BATCH = CHUNKS * 3 * SEQ  # 3 windows of 16 (+1) tokens per micro-step
# Token counts with every edge of the phase rule: a shard with no window (10), one of exactly one window and no
# phase (17), a phase range below seq_len - 1 (20, 40), and longer ones (full phase range).
WINDOW_SHARDS = [200, 17, 90, 10, 333, 20, 40]


class ScriptLoader:
    """The slow reference: #1572's ShuffledSequenceLoader written out as its script defines it (whole shards in
    memory, Python lists popped from the end, the probabilities rebuilt for every batch)."""

    def __init__(self, paths, seq_len, rank, world):
        self.world, self.seq_len = world, seq_len
        self.files = sorted(paths)[rank::world]
        self.rng = np.random.Generator(np.random.PCG64(rank))
        self.tokens = [np.fromfile(f, dtype="<u2", offset=HEADER_BYTES).astype(np.int64) for f in self.files]
        self.start_inds = [[] for _ in self.files]
        for si in range(len(self.files)):
            self.reset_shard(si)

    def reset_shard(self, si):
        n = len(self.tokens[si])
        max_phase = min(self.seq_len - 1, max(0, n - self.seq_len - 1))
        phase = int(self.rng.integers(max_phase + 1)) if max_phase > 0 else 0
        num_sequences = (n - 1 - phase) // self.seq_len
        self.start_inds[si] = (phase + self.rng.permutation(num_sequences) * self.seq_len).tolist()

    def next_batch(self, global_tokens, grad_accum_steps):
        """(x, y) of one micro-step, each (batch, seq_len)."""
        batch = global_tokens // (self.world * grad_accum_steps) // self.seq_len
        remaining = np.array([len(s) for s in self.start_inds], dtype=np.float64)
        x, y = [], []
        for _ in range(batch):
            total = remaining.sum()
            if total <= 0:
                for si in range(len(self.files)):
                    self.reset_shard(si)
                remaining = np.array([len(s) for s in self.start_inds], dtype=np.float64)
                total = remaining.sum()
            si = int(self.rng.choice(len(self.files), p=remaining / total))
            start = self.start_inds[si].pop()
            remaining[si] -= 1
            window = self.tokens[si][start : start + self.seq_len + 1]
            x.append(window[:-1])
            y.append(window[1:])
        return np.stack(x), np.stack(y)


def window_shards(tmp_path, lengths=WINDOW_SHARDS):
    """Random tokens with a BOS about every 12 tokens (windows ignore them); written out of name order."""
    rng = np.random.default_rng(5)
    paths = [tmp_path / f"fineweb_train_{i:06d}.bin" for i in range(len(lengths))]
    for i in reversed(range(len(lengths))):
        tokens = rng.integers(2, 500, size=lengths[i])
        tokens[rng.random(lengths[i]) < 1 / 12] = BOS_ID
        write_shard(paths[i], tokens)
    return paths[::-1]  # the loaders sort them


@pytest.mark.parametrize("world", [1, 2])
def test_shuffled_windows_are_the_scripts_draw_for_draw(tmp_path, world):
    paths = window_shards(tmp_path)
    accum = accum_steps(world)
    for rank in range(world):
        script = ScriptLoader(paths, SEQ, rank, world)
        batches = take(WindowLoader(paths, WINDOW_BATCH, SEQ, world=world, rank=rank), 12)  # several epochs
        for rows in batches:
            assert rows.shape == (accum, 3, SEQ + 1) and rows.dtype == torch.int64
            for k in range(accum):
                x, y = script.next_batch(WINDOW_BATCH, accum)
                assert np.array_equal(rows[k, :, :-1].numpy(), x) and np.array_equal(rows[k, :, 1:].numpy(), y)
    assert (rows[:, :, 1:] == BOS_ID).any()  # documents do not cut windows


def test_shuffled_ranks_own_their_shards_and_seeds_share_the_stream(tmp_path):
    paths = window_shards(tmp_path, [100, 100])
    value = {}
    for i, path in enumerate(sorted(paths)):  # shard i holds only the tokens 10 * (i + 1) .. 10 * (i + 1) + 5
        tokens = 10 * (i + 1) + np.arange(100) % 6
        write_shard(path, tokens)
        value[i] = set(tokens.tolist())
    for rank in (0, 1):
        rows = take(WindowLoader(paths, WINDOW_BATCH, SEQ, world=2, rank=rank), 3)
        assert set(torch.cat(rows).flatten().tolist()) <= value[rank]
    one, again = (take(WindowLoader(paths, WINDOW_BATCH, SEQ), 3) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(one, again))  # no seed: the stream is the rank's alone


def test_shuffled_resume_replays_to_the_position(tmp_path):
    paths = window_shards(tmp_path)
    stream = take(WindowLoader(paths, WINDOW_BATCH, SEQ), 14)
    loader = WindowLoader(paths, WINDOW_BATCH, SEQ)
    head = [next(loader) for _ in range(9)]
    position = loader.state_dict()
    loader.close()
    assert position == {"batches": 9} and start_position("shuffled") == {"batches": 0}
    tail = take(WindowLoader(paths, WINDOW_BATCH, SEQ, position=position), 5)
    assert all(torch.equal(a, b) for a, b in zip(stream, head + tail))


def test_shuffled_errors(tmp_path):
    paths = window_shards(tmp_path, [10, 16])
    with pytest.raises(PgolfError, match="holds a window of 17 tokens"):
        WindowLoader(paths, WINDOW_BATCH, SEQ)
    paths = window_shards(tmp_path, [100])
    with pytest.raises(PgolfError, match="rank 1 of 2 owns no train shard"):
        WindowLoader(paths, WINDOW_BATCH, SEQ, world=2, rank=1)
    with pytest.raises(PgolfError, match="multiple of 8 x 16"):
        WindowLoader(paths, WINDOW_BATCH + 8, SEQ)
    with pytest.raises(PgolfError, match="no train shards"):
        WindowLoader([], WINDOW_BATCH, SEQ)
    token_path = paths[0]
    write_shard(token_path, np.full(100, 900))
    with pytest.raises(PgolfError, match="outside the vocabulary"):
        take(WindowLoader(paths, WINDOW_BATCH, SEQ, vocab_size=500), 1)
