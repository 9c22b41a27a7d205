"""Token-only n-gram tilt of the evaluation (docs/record-stack.md §8.3), exact and causal.

Hints. For target position i >= order-1 the context is the previous order-1 tokens of the stream,
`tokens[i-order+1:i]` (the stream crosses document boundaries). Among the earlier positions j < i with the
same context, each continuation `tokens[j]` is counted exactly (contexts are compared token by token, so
there are no hash collisions). The context's *top* continuation is replaced only when another continuation's
count strictly exceeds the top's count, so ties keep the earlier top. `hint[i]` is that top continuation
whenever the context has been seen before, gated or not, and -1 otherwise (also for i < order-1);
`gated[i]` says whether the tilt applies: top count / number of past continuations >= threshold. Position
i's own continuation is counted only after its hint is produced, so hint[i] and gated[i] are functions of
`tokens[:i]`. There are no within-word or word-start channels (their gates read the target, §1.2).

Upstream runs a C hash table over the stream (~150-170 s inside the eval timer). Here the same state
machine is evaluated in closed form with numpy: one sort groups the windows by context (a hash orders them,
then every group is verified token by token and split exactly where hashes collided), a second sort groups
each context's continuations, and the running top of a context is the continuation whose count first
reached the running maximum count (bench/ngram_speed.py: seconds for the 47.85M-token val stream).

Tilt. On gated positions the model distribution p becomes p'(a) = exp(beta*[a = h]) p(a) / Z with
Z = 1 + q (e^beta - 1) and q = p(h), so the scored loss is l' = l - beta*[y = h] + log1p(q (e^beta - 1)),
computed in fp32 from the same forward as l. TTT still trains on the untilted loss.
"""

import math

import numpy as np
import torch

from .errors import PgolfError

TOKEN_BITS = 16  # shards hold uint16 tokens (vocabularies < 65,536)
WORD_TOKENS = 4  # tokens packed into one little-endian uint64 word when hashing windows
_HASH_MULTIPLIERS = np.random.default_rng(0x6E6772616D).integers(1, 2**63, size=64, dtype=np.uint64) * 2 + 1
PROBE_SEED = 0  # cut positions of the evaluate stage's causality probe (fixed, so the DAG's outputs are reproducible)


def _check(tokens, order, threshold) -> np.ndarray:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise PgolfError(f"eval.tilt.order: must be an integer >= 1 (got {order!r}); fix it in your config")
    if not 0.0 <= float(threshold) <= 1.0:
        raise PgolfError(f"eval.tilt.threshold: must lie in [0, 1] (got {threshold!r}); fix it in your config")
    tokens = np.asarray(tokens)
    if tokens.size == 0:
        tokens = tokens.astype(np.int64)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise PgolfError(f"n-gram hints: tokens must be a 1-D integer array (got {tokens.dtype}{tokens.shape})")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= 2**TOKEN_BITS):
        raise PgolfError("n-gram hints: token ids must lie in [0, 65535]; use a vocabulary below 65,536 tokens")
    return tokens


def _window_words(tokens: np.ndarray, length: int, count: int) -> list[np.ndarray]:
    """Views word[m][s] = tokens[s+4m : s+4m+4] packed little-endian (the last word masked to the window)."""
    padded = np.zeros(tokens.size + WORD_TOKENS, dtype="<u2")
    padded[: tokens.size] = tokens
    every = np.ndarray((tokens.size,), dtype="<u8", buffer=padded, strides=(2,))  # 4 tokens from each offset
    words = []
    for m in range(-(-length // WORD_TOKENS)):
        word = every[WORD_TOKENS * m : WORD_TOKENS * m + count]
        left = length - WORD_TOKENS * m
        if left < WORD_TOKENS:
            word = word & np.uint64((1 << (TOKEN_BITS * left)) - 1)
        words.append(word)
    return words


def _context_groups(words: list[np.ndarray], count: int):
    """Window starts ordered by (exact context, start), kept only where a context hash repeats.

    Returns (starts, first): `first` marks the first window of each context. Windows are sorted by a hash of
    their words packed above the start; each hash group is then verified word by word against its first
    window and, where a collision put different contexts together, split exactly.
    """
    pos_bits = max(1, (count - 1).bit_length())
    keys = np.zeros(count, dtype=np.uint64)
    scratch = np.empty(count, dtype=np.uint64)  # reused: fresh stream-sized buffers cost page faults
    for word, mult in zip(words, _HASH_MULTIPLIERS):
        keys += np.multiply(word, mult, out=scratch)
    keys >>= np.uint64(pos_bits)
    keys <<= np.uint64(pos_bits)
    keys |= np.arange(count, dtype=np.uint64)
    keys.sort()  # by (hash, start): the one sort over the whole stream
    same = np.zeros(count + 1, dtype=bool)  # same[j]: keys[j] has the hash of keys[j-1]
    np.less(np.bitwise_xor(keys[1:], keys[:-1], out=scratch[1:]), 1 << pos_bits, out=same[1:count])
    del scratch
    repeated = same[:count] | same[1:]
    starts = (keys[repeated] & np.uint64((1 << pos_bits) - 1)).astype(np.int64)
    first = ~same[:count][repeated]
    del keys, same, repeated

    group = np.cumsum(first) - 1
    group_first = starts[first][group]
    differs = np.zeros(starts.size, dtype=bool)
    for word in words:
        differs |= word[starts] != word[group_first]
    if not differs.any():
        return starts, first
    collided = np.zeros(group[-1] + 1, dtype=bool)
    collided[group[differs]] = True
    split = collided[group]
    rows = np.stack([word[starts[split]] for word in words], axis=1)
    context = np.unique(rows, axis=0, return_inverse=True)[1].ravel()
    order = np.lexsort((starts[split], context))
    context = context[order]
    split_first = np.ones(context.size, dtype=bool)
    split_first[1:] = context[1:] != context[:-1]
    return (
        np.concatenate([starts[~split], starts[split][order]]),
        np.concatenate([first[~split], split_first]),
    )


def _stable_argsort(keys: np.ndarray, key_bits: int) -> np.ndarray:
    """Stable argsort of non-negative int64 keys below 2**key_bits: one packed value sort when it fits."""
    index_bits = max(1, (keys.size - 1).bit_length())
    if key_bits + index_bits > 64:
        return np.argsort(keys, kind="stable")
    packed = keys.astype(np.uint64) << np.uint64(index_bits)
    packed |= np.arange(keys.size, dtype=np.uint64)
    packed.sort()
    return (packed & np.uint64((1 << index_bits) - 1)).astype(np.int64)


def _run_starts(flags: np.ndarray) -> np.ndarray:
    """For each index, the index of the last True flag at or before it (flags[0] must be True)."""
    return np.maximum.accumulate(np.where(flags, np.arange(flags.size), 0))


def hints(tokens, order: int = 16, threshold: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """(hint, gated) for every position of `tokens`: int32 (-1 where the context is new) and bool.

    hint[i] is the top continuation of context tokens[i-order+1:i] among positions < i (see the module
    docstring for the tie rule); gated[i] is whether its share of those continuations is >= threshold.
    """
    tokens = _check(tokens, order, threshold)
    n, length = tokens.size, order - 1
    hint = np.full(n, -1, dtype=np.int32)
    gated = np.zeros(n, dtype=bool)
    count = n - length  # windows: context tokens[s:s+length] predicts target s+length
    if count < 2:
        return hint, gated
    starts, first = _context_groups(_window_words(tokens, length, count), count)
    if starts.size == 0:
        return hint, gated

    target = tokens[starts + length].astype(np.int64)
    context = np.cumsum(first) - 1
    tok_bits = max(1, int(target.max()).bit_length())
    pair = (context << tok_bits) | target
    by_pair = _stable_argsort(pair, max(1, int(pair.max()).bit_length()))
    pair_sorted = pair[by_pair]
    pair_first = np.ones(pair.size, dtype=bool)
    pair_first[1:] = pair_sorted[1:] != pair_sorted[:-1]
    seen = np.empty(pair.size, dtype=np.int64)  # count of this (context, continuation) including this one
    seen[by_pair] = np.arange(pair.size) - _run_starts(pair_first) + 1
    del pair, by_pair, pair_sorted, pair_first

    # The top after each window: the continuation that first reached the context's running maximum count
    # (a later continuation that only ties that count does not replace it).
    offset = context * (seen.size + 1)  # keeps each context's running maximum its own
    running_max = np.maximum.accumulate(seen + offset)
    record = np.ones(seen.size, dtype=bool)
    record[1:] = running_max[1:] > running_max[:-1]
    top = target[_run_starts(record)]
    top_count = running_max - offset
    del offset, running_max, record, seen

    later = np.flatnonzero(~first)  # windows whose context was seen before: the previous window's state
    past = later - _run_starts(first)[later]
    positions = starts[later] + length
    hint[positions] = top[later - 1]
    gated[positions] = top_count[later - 1] / past >= threshold
    return hint, gated


def causality_probe(tokens, order: int, threshold: float, cuts: int, rng: np.random.Generator, full=None) -> dict:
    """The tilt-causality audit probe: hints of the stream cut at random positions equal the full stream's.

    `full` takes the (hint, gated) already computed on the whole stream; otherwise they are computed here.
    """
    tokens = _check(tokens, order, threshold)
    hint, gated = full if full is not None else hints(tokens, order, threshold)
    cut_at = sorted(int(c) for c in rng.integers(1, tokens.size, size=cuts)) if tokens.size > 1 else []
    mismatched = 0
    for cut in cut_at:
        cut_hint, cut_gated = hints(tokens[:cut], order, threshold)
        mismatched += int(np.count_nonzero((cut_hint != hint[:cut]) | (cut_gated != gated[:cut])))
    return {
        "cuts": cut_at,
        "identical": mismatched == 0,
        "mismatched_positions": mismatched,
        "compared_positions": int(sum(cut_at)),
        "order": int(order),
        "threshold": float(threshold),
        "stream_tokens": int(tokens.size),
        "gated_share": float(gated.mean()) if gated.size else 0.0,
    }


def tilt_outputs(out: dict, result, cfg, scored: int, tokens, full, is_main: bool):
    """eval.json's tilt entries after a tilted TTT eval (pgolf.evaluate; `result` a pgolf.ttt.TTTResult, `cfg`
    eval.tilt): the untilted score, the gated share and the settings, then on the main rank, outside the eval
    timer, the causality probe over the hints `full`."""
    out["ttt_no_tilt"] = {k: result.untilted[k] for k in ("val_loss", "val_bpb")}
    gated_share = result.gated / max(scored, 1)
    out["tilt"].update(gated_share=gated_share, order=cfg.order, threshold=cfg.threshold, boost=cfg.boost)
    if is_main:
        rng = np.random.default_rng(PROBE_SEED)
        out["probes"]["tilt_causal"] = causality_probe(tokens, cfg.order, cfg.threshold, cfg.probe_cuts, rng, full=full)


def tilt(nll, logq_hint, target_is_hint, gated, beta: float):
    """Scored per-token loss after the tilt (fp32): l - beta*[y = h] + log1p(q (e^beta - 1)) where gated."""
    nll = nll.float()
    q = torch.where(gated, logq_hint.float(), torch.full_like(nll, -torch.inf)).exp()
    tilted = nll - beta * target_is_hint.float() + torch.log1p(q * math.expm1(beta))
    return torch.where(gated, tilted, nll)


def tilted_log_probs(log_probs, hint, gated, beta: float):
    """The tilted log-distribution over the whole vocabulary (fp32), untouched where not gated."""
    log_probs = log_probs.float()
    index = hint.long().clamp_min(0).unsqueeze(-1)
    logq = log_probs.gather(-1, index)
    boost = torch.zeros_like(log_probs).scatter_(-1, index, beta)
    tilted = log_probs + boost - torch.log1p(logq.exp() * math.expm1(beta))
    return torch.where(gated.unsqueeze(-1), tilted, log_probs)
