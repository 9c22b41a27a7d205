"""The shuffled training loader, `train.loader: shuffled` (#1572's `ShuffledSequenceLoader`; the record's loader
and the prefetching they share are pgolf.loader's). Shipped only in scripts whose config uses it
(pgolf.codepack.OPTIONAL).

Rank r owns the sorted train shards [r::world] and a PCG64(r) generator (the run seed plays no part, so seeds share
the stream). Per shard it draws a phase in [0, min(seq_len - 1, tokens - seq_len - 1)] (none when that is 0) and a
permutation of the shard's seq_len-aligned windows of seq_len + 1 tokens from that phase; each window picks a shard
with probability proportional to the windows it has left and takes the last of its permuted windows; once every shard is spent, every shard draws anew,
in order. Windows ignore documents (a BOS is an ordinary token). A micro-step gets batch_tokens / 8 / seq_len
windows, so the stream depends on the world size; the position counts the steps, and a resume replays the draws.
"""

from pathlib import Path

import numpy as np

from .errors import PgolfError
from .loader import CHUNKS, Prefetcher, accum_steps, start_position
from .shards import read_header, read_shard


class ShuffledWindows:
    """One rank's window draws of #1572's ShuffledSequenceLoader (the module docstring gives the rule): `next()`
    is the (shard, start) of the next window of seq_len + 1 tokens. Only token counts are read here; `tokens(i)`
    opens shard i on first use."""

    def __init__(self, paths, seq_len: int, rank: int, world: int, vocab_size=None):
        all_paths = sorted(Path(p) for p in paths)
        self.paths = all_paths[rank::world]
        if not self.paths:
            raise PgolfError(
                f"train.loader shuffled: rank {rank} of {world} owns no train shard ({len(all_paths)} shard(s) for "
                f"{world} ranks, split [rank::world]); use at least {world} shards or fewer GPUs"
            )
        self.seq_len, self.vocab_size = seq_len, vocab_size
        self.counts = [read_header(p) for p in self.paths]
        if max(self.counts) <= seq_len:
            raise PgolfError(
                f"{self.paths[0].parent}: no train shard of rank {rank} holds a window of {seq_len + 1} tokens; "
                "use more training data or a shorter model.train_seq_len"
            )
        self.rng = np.random.Generator(np.random.PCG64(rank))
        self._shards = {}
        self._new_epoch()

    def _new_epoch(self):
        """Per shard, in order: its phase, then the permutation of its windows (the draws in the script's order)."""
        self.starts = []
        for n in self.counts:
            max_phase = min(self.seq_len - 1, max(0, n - self.seq_len - 1))
            phase = int(self.rng.integers(max_phase + 1)) if max_phase > 0 else 0
            self.starts.append(phase + self.seq_len * self.rng.permutation((n - 1 - phase) // self.seq_len))
        self.left = np.array([len(s) for s in self.starts], dtype=np.float64)  # windows not yet taken, per shard

    def next(self) -> tuple[int, int]:
        total = self.left.sum()
        if total <= 0:
            self._new_epoch()
            total = self.left.sum()
        shard = int(self.rng.choice(len(self.paths), p=self.left / total))
        self.left[shard] -= 1
        return shard, int(self.starts[shard][int(self.left[shard])])  # the permutation is taken from its end

    def tokens(self, shard: int) -> np.ndarray:
        if shard not in self._shards:
            self._shards[shard] = read_shard(self.paths[shard], self.vocab_size)
        return self._shards[shard]


class WindowLoader(Prefetcher):
    """The shuffled loader: yields this rank's (accum, batch_tokens / 8 / seq_len, seq_len + 1) int64 windows for
    each step (micro-step k's windows are the draws after k earlier micro-steps'); `position` = {"batches"}."""

    def __init__(
        self,
        paths,
        batch_tokens: int,
        seq_len: int,
        world=1,
        rank=0,
        position=None,
        prefetch=2,
        pin_memory=False,
        vocab_size=None,
    ):
        if not paths:
            raise PgolfError("the manifest lists no train shards; re-run the data stage (tokenize or download)")
        if batch_tokens % (CHUNKS * seq_len):
            raise PgolfError(
                f"train.batch_tokens {batch_tokens} is not a multiple of {CHUNKS} x {seq_len} (model.train_seq_len); "
                "fix it in the config"
            )
        self.accum = accum_steps(world)
        self.rows = batch_tokens // CHUNKS // seq_len
        self.windows = ShuffledWindows(paths, seq_len, rank, world, vocab_size)
        position = position or start_position("shuffled")
        for _ in range(position["batches"] * self.accum * self.rows):  # a resume replays the draws (before the clock)
            self.windows.next()
        super().__init__(position, prefetch, pin_memory)

    def _batches(self, position):
        batches, w = position["batches"], self.windows
        while True:
            draws = [w.next() for _ in range(self.accum * self.rows)]
            rows = np.stack([w.tokens(shard)[start : start + w.seq_len + 1] for shard, start in draws])
            batches += 1
            yield rows.reshape(self.accum, self.rows, w.seq_len + 1), {"batches": batches}
