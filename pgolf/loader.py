"""Training loaders (docs/record-stack.md §4). Each runs a background thread that prepares the next batches while the
GPU works, and hands out its position, which a checkpoint stores, after each batch.

`documents` (the record's `DocumentPackingLoader`): shards are read sequentially in sorted order (the export is
already shuffled). Every step takes one contiguous span of CHUNKS x (chunk_tokens + 1) tokens that starts at a BOS
token and lies inside one shard; a span that would run past the shard's end moves to the next shard (after the last
shard: the first again, next epoch). The span holds the 8 micro-batches of the record's 8 ranks; with `world` ranks
and `accum = 8 // world` micro-steps, rank r's micro-step k reads chunk k * world + r, so every world size trains on
the same global batch. The stream is a pure function of the position (shard, offset, epoch); seeds share it, as in
the record.

`shuffled` (#1572's `ShuffledSequenceLoader`): rank r owns the sorted train shards [r::world] and a PCG64(r)
generator (the run seed plays no part, so seeds share the stream). Per shard it draws a phase in
[0, min(seq_len - 1, tokens - seq_len - 1)] (none when that is 0) and a permutation of the shard's seq_len-aligned
windows of seq_len + 1 tokens from that phase; each window picks a shard with probability proportional to the
windows it has left and takes the last of its permuted windows; once every shard is spent, every shard draws anew,
in order. Windows ignore documents (a BOS is an ordinary token). A micro-step gets batch_tokens / 8 / seq_len
windows, so the stream depends on the world size; the position counts the steps, and a resume replays the draws.
"""

import queue
import threading
from pathlib import Path

import numpy as np
import torch

from .errors import PgolfError
from .shards import BOS_ID, read_header, read_shard

CHUNKS = 8  # the record's 8 ranks: one chunk per (rank, micro-step)
LOADERS = ("documents", "shuffled")


def accum_steps(world: int) -> int:
    if world < 1 or CHUNKS % world:
        raise PgolfError(f"world size {world} does not divide {CHUNKS}; use 1, 2, 4 or 8 ranks (hardware.gpus)")
    return CHUNKS // world


def start_position(loader: str = "documents") -> dict:
    return {"batches": 0} if loader == "shuffled" else {"shard": 0, "offset": 0, "epoch": 0}


class _Shard:
    """One shard's tokens (memory-mapped) and its BOS positions."""

    def __init__(self, path: Path, vocab_size=None):
        self.tokens = read_shard(path, vocab_size)
        self.bos = np.flatnonzero(np.asarray(self.tokens) == BOS_ID)

    def span_start(self, offset: int, span: int):
        """The first BOS at or after `offset` whose span fits in the shard, or None."""
        i = np.searchsorted(self.bos, offset)
        if i < len(self.bos) and self.bos[i] + span <= len(self.tokens):
            return int(self.bos[i])
        return None


class _Prefetcher:
    """Hands out the batches `_batches(position)` yields ((rows, position after them), made on a background
    thread), as int64 CPU tensors; `state_dict()` is the position of the next batch not yet handed out (prefetched
    batches are produced again)."""

    def __init__(self, position: dict, prefetch: int, pin_memory: bool):
        self.pin_memory = pin_memory
        self.position = dict(position)
        self._queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(dict(self.position),), daemon=True)
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        rows, self.position = item
        return rows

    def state_dict(self) -> dict:
        return dict(self.position)

    def close(self):
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def _batches(self, position):
        raise NotImplementedError

    def _produce(self, position):
        try:
            for rows, position in self._batches(position):
                rows = torch.from_numpy(rows.astype(np.int64))
                if self.pin_memory:
                    rows = rows.pin_memory()
                while not self._stop.is_set():
                    try:
                        self._queue.put((rows, dict(position)), timeout=0.05)
                        break
                    except queue.Full:
                        pass
                if self._stop.is_set():
                    return
        except BaseException as e:  # surfaces in the training loop instead of hanging it
            self._queue.put(e)


class DocumentLoader(_Prefetcher):
    """Yields this rank's (accum, chunk_tokens + 1) int64 token rows for each step; `position` is resumable."""

    def __init__(
        self, paths, batch_tokens: int, world=1, rank=0, position=None, prefetch=2, pin_memory=False, vocab_size=None
    ):
        self.paths = sorted(Path(p) for p in paths)
        self.vocab_size = vocab_size  # ids at or above it are refused as each shard opens
        if not self.paths:
            raise PgolfError("the manifest lists no train shards; re-run the data stage (tokenize or download)")
        if batch_tokens % CHUNKS:
            raise PgolfError(f"train.batch_tokens {batch_tokens} is not a multiple of {CHUNKS}; fix it in the config")
        self.world, self.rank, self.accum = world, rank, accum_steps(world)
        self.chunk = batch_tokens // CHUNKS + 1  # one extra token: the last target
        self.span = CHUNKS * self.chunk
        super().__init__(position or start_position(), prefetch, pin_memory)

    def _batches(self, position):
        shard, shard_index = None, None
        while True:
            rows, position, shard, shard_index = self._read(position, shard, shard_index)
            yield rows, position

    def _read(self, position, shard, shard_index):
        """This rank's rows of the span at `position`, and the position after it."""
        index, offset, epoch = position["shard"], position["offset"], position["epoch"]
        for _ in range(len(self.paths) + 1):
            if shard_index != index:
                shard, shard_index = _Shard(self.paths[index], self.vocab_size), index
            start = shard.span_start(offset, self.span)
            if start is not None:
                chunks = [start + (k * self.world + self.rank) * self.chunk for k in range(self.accum)]
                rows = np.stack([shard.tokens[c : c + self.chunk] for c in chunks])
                return rows, {"shard": index, "offset": start + self.span, "epoch": epoch}, shard, shard_index
            index, offset = index + 1, 0
            if index == len(self.paths):
                index, epoch = 0, epoch + 1
        raise PgolfError(
            f"{self.paths[0].parent}: no train shard holds a {self.span:,}-token span starting at a BOS token; "
            "use more training data or a smaller train.batch_tokens"
        )


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


class WindowLoader(_Prefetcher):
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
