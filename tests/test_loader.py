"""The document-packing loader: BOS-aligned spans, the same global batch for every world size, resumable
positions, shard changes and wrap-around, clear errors."""

import numpy as np
import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.loader import CHUNKS, DocumentLoader, accum_steps
from pgolf.shards import BOS_ID, write_shard

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
