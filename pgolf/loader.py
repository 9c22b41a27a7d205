"""Training loaders (docs/record-stack.md §4). Each runs a background thread that prepares the next batches while the
GPU works, and hands out its position, which a checkpoint stores, after each batch.

`documents` (the record's `DocumentPackingLoader`): shards are read sequentially in sorted order (the export is
already shuffled). Every step takes one contiguous span of CHUNKS x (chunk_tokens + 1) tokens that starts at a BOS
token and lies inside one shard; a span that would run past the shard's end moves to the next shard (after the last
shard: the first again, next epoch). The span holds the 8 micro-batches of the record's 8 ranks; with `world` ranks
and `accum = 8 // world` micro-steps, rank r's micro-step k reads chunk k * world + r, so every world size trains on
the same global batch. The stream is a pure function of the position (shard, offset, epoch); seeds share it, as in
the record.

`shuffled` (#1572's `ShuffledSequenceLoader`): pgolf.window_loader.
"""

import queue
import threading
from pathlib import Path

import numpy as np
import torch

from .errors import PgolfError
from .shards import BOS_ID, read_shard

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


class Prefetcher:
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


class DocumentLoader(Prefetcher):
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
