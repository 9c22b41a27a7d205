"""Phased score-first LoRA TTT: bookkeeping, score-before-update, document isolation, tilt, world sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.bpb import ValData
from pgolf.dist import Dist
from pgolf.model import GPT, ModelConfig
from pgolf.ttt import (
    PhasedTTT,
    TTTConfig,
    batch_chunk,
    chunk_sizes,
    length_batches,
    phase_boundaries,
    phase_documents,
    queue_order,
    split_documents,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
CPU = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
SMALL = dict(
    seq_len=48,
    chunk_size=16,
    batch_size=4,
    lora_rank=4,
    lora_alpha=8.0,
    lr=1e-2,
    window_multiple=16,
    global_chunk_tokens=128,
    global_batch_seqs=2,
    prefix_docs=6,
    phases=2,
)


def tiny_model(seed=0) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=64,
        num_layers=4,
        model_dim=32,
        num_heads=2,
        num_kv_heads=1,
        rope_dims=8,
        gate_window=4,
        num_loops=1,
        loop_start=1,
        loop_end=2,
        parallel_start_layer=3,
        xsa_last_n=2,
    )
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.looping = True
    return model


def corpus(n_docs=12, seed=0, max_len=90) -> ValData:
    rng = np.random.default_rng(seed)
    docs = [np.concatenate([[1], rng.integers(2, 64, size=int(rng.integers(1, max_len)))]) for _ in range(n_docs)]
    docs.insert(3, np.array([1]))  # an empty document (BOS alone): nothing to score
    tokens = np.concatenate(docs).astype(np.int64)
    return ValData(tokens=tokens, position_bytes=rng.integers(0, 5, size=tokens.size).astype(np.int32), docs=n_docs + 1)


def run_ttt(val, model=None, hints=None, **overrides):
    cfg = TTTConfig(**{**SMALL, **overrides})
    return PhasedTTT(model or tiny_model(), val, cfg, CPU).run(hints, boost=2.625)


def reference_find_docs(tokens):
    """Upstream's _find_docs written out: [BOS_i, BOS_{i+1}] inclusive, the last document to the end."""
    bos = [i for i, t in enumerate(tokens) if t == 1]
    docs = []
    for k, start in enumerate(bos):
        end = bos[k + 1] + 1 if k + 1 < len(bos) else len(tokens)
        if end - start >= 2:
            docs.append((start, end - start))
    return docs


def reference_upstream_order(lengths, batch_size, claimed, boundary):
    """Slow reference of upstream's queue and phase selection: batches of the length-sorted documents, the queue
    sorted (stably) by each batch's longest document descending, scored documents as (batch index, position)."""
    entries = sorted(enumerate(lengths), key=lambda e: e[1])
    batches = [entries[i : i + batch_size] for i in range(0, len(entries), batch_size)]
    queue = sorted(enumerate(batches), key=lambda ib: -max(n for _, n in ib[1]))
    scored = [(b, pos, doc) for b, batch in queue[:claimed] for pos, (doc, _) in enumerate(batch)]
    scored.sort(key=lambda x: (x[0], x[1]))
    return [[doc for doc, _ in batch] for _, batch in queue], [doc for _, _, doc in scored[:boundary]]


def test_documents_batches_chunks_and_phases():
    tokens = np.array([1, 5, 6, 1, 1, 7, 1, 8, 9, 10, 11])
    starts, lengths = split_documents(tokens)
    assert starts.tolist() == [0, 3, 4, 6] and lengths.tolist() == [4, 2, 3, 5]  # each through the next BOS
    lengths = np.array([5, 1, 9, 3, 7])
    batches = length_batches(lengths, 2)
    assert [b.tolist() for b in batches] == [[1, 3], [0, 4], [2]]
    assert queue_order(lengths, batches) == [2, 1, 0]  # longest batch first
    cfg = TTTConfig(short_doc_chunks=[[2000, 24], [256, 8]])
    assert chunk_sizes(np.array([10, 256, 257, 2000, 2001]), cfg).tolist() == [8, 8, 24, 24, 48]
    assert phase_boundaries(TTTConfig(), 50000) == [833, 1666, 2500]  # the record's three phases
    assert phase_boundaries(TTTConfig(), 1666) == [833]  # a phase after every document is useless
    assert phase_boundaries(TTTConfig(phases=0), 50000) == []


@pytest.mark.parametrize("seed", range(6))
def test_spans_queue_and_phase_documents_match_upstream(seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 64, size=int(rng.integers(20, 400)))
    tokens[rng.integers(0, tokens.size, size=int(rng.integers(1, 40)))] = 1
    tokens[0] = 1
    if seed % 2:
        tokens[-1] = 1  # a closing BOS alone: no target of its own
    starts, lengths = split_documents(tokens)
    assert list(zip(starts.tolist(), lengths.tolist())) == reference_find_docs(tokens.tolist())
    lengths = rng.integers(1, 6, size=int(rng.integers(1, 50)))  # many ties: the stable orders matter
    batch_size = int(rng.integers(1, 6))
    batches = length_batches(lengths, batch_size)
    queue = queue_order(lengths, batches)
    claimed = int(rng.integers(1, len(batches) + 2))
    boundary = int(rng.integers(1, lengths.size + 1))
    ref_queue, ref_docs = reference_upstream_order(lengths.tolist(), batch_size, claimed, boundary)
    assert [batches[i].tolist() for i in queue] == ref_queue
    assert phase_documents(batches, queue, claimed, boundary).tolist() == ref_docs


def test_global_phase_trains_on_the_documents_upstream_picks(monkeypatch):
    """Each phase trains on the reference's documents, their spans (closing BOS included) concatenated."""
    val = corpus()
    claims = []
    original = PhasedTTT._global_phase

    def spy(self, boundary, claimed):
        claims.append((boundary, claimed))
        return original(self, boundary, claimed)

    monkeypatch.setattr(PhasedTTT, "_global_phase", spy)
    result = run_ttt(val)
    _, lengths = split_documents(val.tokens)
    assert len(claims) == len(result.phases) == 2
    for (boundary, claimed), phase in zip(claims, result.phases):
        _, docs = reference_upstream_order(lengths.tolist(), SMALL["batch_size"], claimed, boundary)
        assert phase["docs"] == len(docs) == boundary
        assert phase["tokens"] == int(lengths[docs].sum())


def test_every_target_scored_exactly_once_with_phases():
    val = corpus()
    result = run_ttt(val, short_doc_chunks=[[20, 4]])
    coverage = result.coverage.numpy()
    assert (coverage[1:] == 1).all() and coverage[0] == 0  # every target, each closing BOS included
    assert result.totals["scored"] == val.targets == val.tokens.size - 1
    assert result.totals["bytes"] == int(val.position_bytes[1:].sum())
    assert [p["boundary"] for p in result.phases] == [3, 6] and all(p["steps"] > 0 for p in result.phases)
    expected_bpb = result.position_nll.double().sum().item() / np.log(2) / result.totals["bytes"]
    assert result.totals["val_bpb"] == pytest.approx(expected_bpb, rel=1e-9)


def first_batch_chunks(val, chunk):
    """Stream positions of chunk 0 and chunk 1 of the documents in the first (longest) batch."""
    starts, lengths = split_documents(val.tokens)
    batches = length_batches(lengths, SMALL["batch_size"])
    docs = batches[queue_order(lengths, batches)[0]]
    first = [np.arange(s + 1, s + 1 + chunk) for s, n in zip(starts[docs], lengths[docs]) if n - 1 > 2 * chunk]
    second = [p + chunk for p in first]
    return np.concatenate(first), np.concatenate(second)


def test_score_happens_before_the_update(monkeypatch):
    """Corrupting the adapters right after each step leaves that chunk's score as it was, and changes the next."""
    val = corpus()
    clean = run_ttt(val, phases=0).position_nll
    step = torch.optim.AdamW.step

    def corrupting_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(torch.randn_like(p))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", corrupting_step)
    corrupted = run_ttt(val, phases=0).position_nll
    chunk0, chunk1 = first_batch_chunks(val, SMALL["chunk_size"])
    assert torch.equal(clean[chunk0], corrupted[chunk0])
    assert not torch.allclose(clean[chunk1], corrupted[chunk1])


def test_score_first_probe_measures_the_update():
    probe = run_ttt(corpus(), phases=0, probe_batches=2).probe
    assert probe["chunks"] == 2 and probe["passed"]
    assert probe["max_abs_diff_before_update"] == 0.0
    assert probe["max_abs_diff_after_update"] > 1e-3  # the probe would see a score taken after the step


def test_documents_never_see_each_other():
    """Changing one document of a batch changes no other document's scores (adapters and windows per document)."""
    val = corpus(n_docs=4)
    base = run_ttt(val, phases=0).position_nll
    starts, lengths = split_documents(val.tokens)
    victim = int(np.argmax(lengths[:-1]))  # not the last: its closing BOS is another document's first token
    tokens = val.tokens.copy()
    body = slice(starts[victim] + 1, starts[victim] + lengths[victim] - 1)
    tokens[body] = np.random.default_rng(1).integers(2, 64, size=lengths[victim] - 2)
    span = slice(starts[victim] + 1, starts[victim] + lengths[victim])  # its targets: the body and the next BOS
    changed = run_ttt(ValData(tokens, val.position_bytes, val.docs), phases=0).position_nll
    others = np.ones(tokens.size, dtype=bool)
    others[span] = False
    assert torch.equal(base[others], changed[others])
    assert not torch.equal(base[span], changed[span])


def test_tilt_changes_the_score_only_on_gated_positions():
    val = corpus()
    rng = np.random.default_rng(3)
    hint = rng.integers(2, 64, size=val.tokens.size).astype(np.int32)
    hint[::3] = val.tokens[::3]  # some hints are right
    gated = rng.random(val.tokens.size) < 0.4
    plain = run_ttt(val, phases=0)
    tilted = run_ttt(val, hints=(hint, gated), phases=0)
    differs = (plain.position_nll != tilted.position_nll).numpy()
    assert differs.any() and not (differs & ~gated).any()
    assert tilted.untilted == plain.totals  # the adapters train on the untilted loss
    assert tilted.gated == int(gated[1:].sum())
    right = gated & (hint == val.tokens) & (val.tokens != 1)
    assert (tilted.position_nll[right] < plain.position_nll[right]).all()  # a correct hint lowers the loss


def world_results(d) -> dict:
    """Diagnostic totals, TTT totals independent of batch placement, and a phased run's coverage."""
    from pgolf.bpb import diagnostic_eval

    val = corpus(n_docs=10)
    out = {"diag": diagnostic_eval(tiny_model(), val, 32, 3, d)}
    independent = TTTConfig(**{**SMALL, "phases": 0, "warm_start_a": False})
    out["ttt"] = PhasedTTT(tiny_model(), val, independent, d).run().totals
    phased = PhasedTTT(tiny_model(), val, TTTConfig(**SMALL), d).run()
    out["phased_coverage_ok"] = bool((phased.coverage[1:] == 1).all() and phased.coverage[0] == 0)
    out["phases"] = len(phased.phases)
    return out


WORKER = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from test_ttt import world_results
from pgolf import dist as pgdist
torch.set_num_threads(1)
d = pgdist.init(0)
out = world_results(d)
if d.is_main:
    json.dump(out, open({out!r}, "w"))
pgdist.shutdown()
"""


def test_world_sizes_one_and_two_agree(tmp_path):
    """gloo with two ranks (torchrun) gives the totals of one rank; the shared queue runs every phase."""
    script, out = tmp_path / "worker.py", tmp_path / "world2.json"
    script.write_text(WORKER.format(tests=str(ROOT / "tests"), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = world_results(CPU), json.loads(out.read_text())
    for key in ("diag", "ttt"):
        assert one[key]["scored"] == two[key]["scored"] and one[key]["bytes"] == two[key]["bytes"]
        assert one[key]["val_loss"] == pytest.approx(two[key]["val_loss"], rel=1e-6)
    assert one["phased_coverage_ok"] and two["phased_coverage_ok"]
    assert one["phases"] == two["phases"] == 2


def test_windows_hold_one_document_so_their_cuts_are_the_row_starts(monkeypatch):
    """window_cuts (made from the shape, no nonzero) equals the model's own BOS/row-start cuts of every window."""
    from pgolf.attention import segment_offsets
    from pgolf.ttt import window_cuts

    seen = []
    model = tiny_model()
    original = model.hidden

    def hidden(ids, *args, cu_seqlens=None, **kwargs):
        if cu_seqlens is not None:  # (adapter_shapes' probe forward passes none)
            assert torch.equal(cu_seqlens, segment_offsets(ids))
            if kwargs.get("adapters") is not None:
                assert torch.equal(cu_seqlens, window_cuts(ids))
            seen.append((kwargs.get("adapters") is not None, ids.size(1), cu_seqlens.numel() - ids.size(0) - 1))
        return original(ids, *args, cu_seqlens=cu_seqlens, **kwargs)

    monkeypatch.setattr(model, "hidden", hidden)
    result = run_ttt(corpus(), model=model, seq_len=32)  # windows shorter than documents: context cut off
    assert result.totals["scored"] == corpus().targets
    assert len({length for is_window, length, _ in seen if is_window}) > 1  # several window lengths
    assert any(extra_cuts > 0 for is_window, _, extra_cuts in seen if not is_window)  # packed global batches


def test_chunk_terms_project_only_the_chunk_and_match_the_whole_window():
    """The head on the gathered chunk positions gives the losses of the full-window logits (slow reference)."""
    from pgolf.lora import BatchedLoRA, adapter_shapes
    from pgolf.ttt import chunk_terms, score_terms

    model = tiny_model().eval()
    lora = BatchedLoRA(adapter_shapes(model, TTTConfig().targets), 3, 4, 8.0, "cpu")
    with torch.no_grad():
        for b in lora.b.values():  # B starts at zero: make every adapter, the head's too, change the output
            b.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, 64, (3, 20), generator=g)
    ids[:, 0] = 1
    in_idx = torch.randint(0, 20, (3, 5), generator=g)
    targets = torch.randint(2, 64, (3, 5), generator=g)
    hint = torch.randint(-1, 64, (3, 5), generator=g)
    nll, logq = chunk_terms(model, lora, ids, in_idx, targets, hint)
    logits = model(ids, adapters=lora)
    ref_nll, ref_logq = score_terms(logits.gather(1, in_idx[..., None].expand(-1, -1, 64)), targets, hint)
    assert nll.shape == (3, 5)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logq, ref_logq, rtol=1e-5, atol=1e-5)
    without = score_terms(model(ids).gather(1, in_idx[..., None].expand(-1, -1, 64)), targets, hint)[0]
    assert (nll - without).abs().max() > 1e-3  # the adapters took part


def test_warmup_compiles_every_shape_the_timed_eval_runs():
    """After PhasedTTT.warmup no graph is compiled inside the run (a compile there would count against the eval
    timer), and the compiled chunk step scores what the eager one does. aot_eager: dynamo's guards and shapes
    are the same as under Inductor, without the C++ build of the CPU kernels."""
    from pgolf import ngram
    from pgolf.evaluate import compiled_graphs
    from pgolf.ttt import chunk_terms

    val = corpus(n_docs=20, max_len=120)
    cfg = TTTConfig(**{**SMALL, "short_doc_chunks": [[40, 8]]})
    hints = ngram.hints(val.tokens, 3, 0.5)
    eager = PhasedTTT(tiny_model(), val, cfg, CPU).run(hints, boost=2.625)
    ttt = PhasedTTT(tiny_model(), val, cfg, CPU)
    ttt.terms = torch.compile(chunk_terms, backend="aot_eager")
    ttt.warmup()
    before = compiled_graphs()
    compiled = ttt.run(hints, boost=2.625)
    assert compiled_graphs() == before
    assert compiled.totals["scored"] == eager.totals["scored"] == val.targets
    assert compiled.totals["val_loss"] == pytest.approx(eager.totals["val_loss"], rel=1e-6)


def test_a_batch_uses_its_longest_documents_chunk(monkeypatch):
    cfg = TTTConfig(chunk_size=64, short_doc_chunks=[[256, 16], [2000, 32]])  # #2140's 256:16,2000:32
    assert batch_chunk(np.array([100, 300]), cfg) == 32 and batch_chunk(np.array([100, 256]), cfg) == 16
    assert batch_chunk(np.array([40, 2001]), cfg) == 64
    val = corpus(n_docs=12, max_len=90)
    widths = []
    original = PhasedTTT._layout

    def record(self, starts, j0, j1, width):
        widths.append(width)
        return original(self, starts, j0, j1, width)

    monkeypatch.setattr(PhasedTTT, "_layout", record)
    ttt = PhasedTTT(tiny_model(), val, TTTConfig(**{**SMALL, "short_doc_chunks": [[50, 4]]}), CPU)
    result = ttt.run(None, boost=2.625)
    assert result.totals["scored"] == val.targets
    queue = [ttt.batches[i] for i in ttt.queue]
    expected = []
    for docs in queue:  # each batch's steps all run at the width of its longest document
        longest = int(ttt.lengths[docs].max())
        width = 4 if longest <= 50 else 16
        expected += [width] * -(-(longest - 1) // width)
    assert widths == expected and {4, 16} <= set(widths)
    assert any(ttt.lengths[docs].min() <= 50 < ttt.lengths[docs].max() for docs in queue)  # a mixed batch
