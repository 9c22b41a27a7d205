"""The exact token-only n-gram hints and the tilt (pgolf.ngram) against a plain dict-based reference."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf import ngram
from pgolf.errors import PgolfError
from pgolf.evaluate import TiltConfig
from pgolf.ttt import score_terms


def reference_hints(tokens, order, threshold):
    """Upstream's state machine, one position at a time: look up the context, then update its counts."""
    tokens = [int(t) for t in tokens]
    hint, gated = np.full(len(tokens), -1, dtype=np.int32), np.zeros(len(tokens), dtype=bool)
    contexts, pairs = {}, {}
    for i in range(order - 1, len(tokens)):
        context = tuple(tokens[i - order + 1 : i])
        state = contexts.setdefault(context, {"total": 0, "top_count": 0, "top": -1})
        if state["total"]:
            hint[i] = state["top"]
            gated[i] = state["top_count"] / state["total"] >= threshold
        pairs[context, tokens[i]] = count = pairs.get((context, tokens[i]), 0) + 1
        state["total"] += 1
        if count > state["top_count"]:
            state["top_count"], state["top"] = count, tokens[i]
    return hint, gated


def stream_with_repeats(rng, n, vocab, copies):
    """Random tokens with `copies` spans pasted from earlier in the stream (so long contexts recur)."""
    tokens = rng.integers(0, vocab, n)
    for _ in range(copies):
        span = int(rng.integers(1, 60))
        dst = int(rng.integers(1, max(2, n - span)))
        src = int(rng.integers(0, dst))
        tokens[dst : dst + span] = tokens[src : src + span].copy()
    return tokens


def assert_matches_reference(tokens, order, threshold):
    hint, gated = ngram.hints(tokens, order, threshold)
    want_hint, want_gated = reference_hints(tokens, order, threshold)
    assert hint.dtype == np.int32 and gated.dtype == bool and hint.shape == gated.shape == (len(tokens),)
    np.testing.assert_array_equal(hint, want_hint)
    np.testing.assert_array_equal(gated, want_gated)


@pytest.mark.parametrize("order", [1, 2, 3, 5, 16, 17])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.8, 1.0])
def test_hints_match_reference_on_streams_with_repeats(order, threshold):
    rng = np.random.default_rng(order * 10 + int(threshold * 10))
    for vocab in (3, 40, 8192):
        tokens = stream_with_repeats(rng, 3000, vocab, copies=80)
        assert_matches_reference(tokens, order, threshold)


@st.composite
def streams(draw):
    pieces = draw(
        st.lists(
            st.one_of(
                st.lists(st.integers(0, 4), min_size=1, max_size=20).map(lambda t: ("fresh", t)),
                st.tuples(st.integers(0, 10**6), st.integers(1, 40)).map(lambda c: ("copy", c)),
            ),
            max_size=25,
        )
    )
    tokens = []
    for kind, value in pieces:
        if kind == "fresh":
            tokens += value
        elif tokens:
            src = value[0] % len(tokens)
            tokens += tokens[src : src + value[1]]
    return np.array(tokens, dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(streams(), st.integers(1, 18), st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]))
def test_hints_match_reference_property(tokens, order, threshold):
    assert_matches_reference(tokens, order, threshold)


def test_hash_collisions_are_split_exactly(monkeypatch):
    # A constant hash puts every window in one group: the exact token-by-token split must still be right.
    monkeypatch.setattr(ngram, "_HASH_MULTIPLIERS", np.zeros(64, dtype=np.uint64))
    rng = np.random.default_rng(7)
    for order in (1, 4, 16):
        assert_matches_reference(stream_with_repeats(rng, 2000, 6, copies=40), order, 0.5)
    # Windows that agree in all but the last token of a partial word must still differ.
    monkeypatch.setattr(ngram, "_HASH_MULTIPLIERS", np.ones(64, dtype=np.uint64))
    assert_matches_reference(rng.integers(0, 2, 3000) * 65535, 15, 0.8)


@pytest.mark.parametrize("key_bits", [5, 62])  # the packed sort and, when key and index overflow, argsort
def test_stable_argsort_paths(key_bits):
    keys = np.random.default_rng(3).integers(0, 4, 1000)
    np.testing.assert_array_equal(ngram._stable_argsort(keys, key_bits), np.argsort(keys, kind="stable"))


def test_ties_keep_the_earlier_top():
    c, x, y = 5, 1, 2  # order 2: the context is the previous token
    tokens = [c, x, c, y, c, y, c, x, c, x]
    at_c = [1, 3, 5, 7, 9]  # continuations of c
    # counts before each: none; x1; x1 y1 (tie: x stays); x1 y2 (y exceeds); x2 y2 (tie: y stays)
    hint, gated = ngram.hints(tokens, order=2, threshold=0.5)
    assert hint[at_c].tolist() == [-1, x, x, y, y]
    assert gated[at_c].tolist() == [False, True, True, True, True]
    hint, gated = ngram.hints(tokens, order=2, threshold=0.6)  # shares 1, 1/2, 2/3, 2/4
    assert gated[at_c].tolist() == [False, True, False, True, False]


def test_positions_without_a_full_context_or_seen_context_get_no_hint():
    tokens = list(range(10)) * 3
    hint, gated = ngram.hints(tokens, order=4, threshold=0.8)
    assert (hint[:13] == -1).all() and not gated[:13].any()  # first pass: every context is new
    assert hint[13:].tolist() == tokens[13:] and gated[13:].all()
    for short in ([], [3], [1, 2, 3]):
        hint, gated = ngram.hints(short, order=16)
        assert hint.tolist() == [-1] * len(short) and not gated.any()


def test_hints_are_causal():
    rng = np.random.default_rng(11)
    tokens = stream_with_repeats(rng, 4000, 5, copies=60)
    hint, gated = ngram.hints(tokens, 6, 0.8)
    for p in (0, 1, 7, 500, 3999):
        changed = tokens.copy()
        changed[p:] = rng.integers(0, 5, tokens.size - p)
        changed_hint, changed_gated = ngram.hints(changed, 6, 0.8)
        np.testing.assert_array_equal(changed_hint[: p + 1], hint[: p + 1])
        np.testing.assert_array_equal(changed_gated[: p + 1], gated[: p + 1])


def test_causality_probe_passes_and_catches_lookahead(monkeypatch):
    tokens = stream_with_repeats(np.random.default_rng(5), 3000, 4, copies=50)
    report = ngram.causality_probe(tokens, 8, 0.8, 4, np.random.default_rng(0))
    assert report["identical"] and report["mismatched_positions"] == 0
    assert len(report["cuts"]) == 4 and report["cuts"] == sorted(report["cuts"])
    assert all(1 <= c < tokens.size for c in report["cuts"])
    assert report["compared_positions"] == sum(report["cuts"])
    assert report["gated_share"] == pytest.approx(ngram.hints(tokens, 8, 0.8)[1].mean())

    def peeking(tokens, order, threshold):  # reads the token it should predict
        tokens = np.asarray(tokens)
        return np.append(tokens[1:], -1).astype(np.int32), np.ones(tokens.size, dtype=bool)

    monkeypatch.setattr(ngram, "hints", peeking)
    leaky = ngram.causality_probe(tokens, 8, 0.8, 4, np.random.default_rng(0))
    assert not leaky["identical"] and leaky["mismatched_positions"] == 4


@pytest.mark.parametrize(
    "bad, fix",
    [
        (dict(tokens=[1, -2, 3]), "65535"),
        (dict(tokens=[70000]), "65,536"),
        (dict(tokens=[1.5, 2.0]), "integer array"),
        (dict(tokens=[1, 2], order=0), "eval.tilt.order"),
        (dict(tokens=[1, 2], threshold=1.5), "eval.tilt.threshold"),
    ],
)
def test_bad_input_names_the_fix(bad, fix):
    with pytest.raises(PgolfError, match=fix):
        ngram.hints(**bad)


def tilt_case(seed=0, rows=64, vocab=50):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=gen) * 3
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    hint = torch.where(torch.rand(rows, generator=gen) < 0.4, targets, torch.randint(0, vocab, (rows,), generator=gen))
    hint[::7] = -1
    gated = (hint >= 0) & (torch.rand(rows, generator=gen) < 0.8)
    return logits, targets, hint, gated


def test_tilted_distribution_is_normalized_and_matches_the_loss():
    logits, targets, hint, gated = tilt_case()
    beta = 2.625
    nll, logq = score_terms(logits, targets, hint)
    torch.testing.assert_close(nll, torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
    log_probs = torch.log_softmax(logits, -1)
    tilted = ngram.tilted_log_probs(log_probs, hint, gated, beta)
    torch.testing.assert_close(tilted.logsumexp(-1), torch.zeros(len(targets)), atol=1e-5, rtol=0)
    loss = ngram.tilt(nll, logq, targets == hint, gated, beta)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, -tilted.gather(-1, targets[:, None]).squeeze(-1))
    torch.testing.assert_close(loss[~gated], nll[~gated], atol=0, rtol=0)
    hit = gated & (targets == hint)
    assert (loss[hit] < nll[hit]).all() and (loss[gated & ~hit] > nll[gated & ~hit]).all()


def test_tilt_closed_form_in_fp32_from_bf16_inputs():
    nll = torch.tensor([1.0, 2.0, 0.5], dtype=torch.bfloat16)
    logq = torch.log(torch.tensor([0.25, 0.1, 0.9])).to(torch.bfloat16)
    loss = ngram.tilt(nll, logq, torch.tensor([True, False, True]), torch.tensor([True, True, False]), 2.625)
    q = logq.float().exp()
    want = nll.float() + torch.stack(
        [-2.625 + torch.log1p(q[0] * np.expm1(2.625)), torch.log1p(q[1] * np.expm1(2.625)), torch.tensor(0.0)]
    )
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want)


def test_tilt_config_holds_the_record_values():
    config = TiltConfig()
    assert (config.order, config.threshold, config.boost) == (16, 0.8, 2.625)
