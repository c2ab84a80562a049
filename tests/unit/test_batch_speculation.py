"""Speculative decoding across a running batch: same texts as plain batching, holes kept out."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import BatchKVCache, KVCache

from app.engine.lm import batch_speculation
from app.engine.lm.batch_speculation import HoleyBatchKVCache, draft_width
from app.engine.lm.sampling import make_request_sampler
from app.engine.lm.types import SamplingParams
from tests.unit.speculation_helpers import plain, run, spec


@pytest.mark.parametrize("corrupt", [None, 0, 1])
def test_greedy_batch_identical_with_drafts(spec_tiny, oracle, corrupt):
    model, prompts = spec_tiny
    reference = run(plain(model), prompts, max_tokens=30)
    oracle["references"] = {tuple(p): t for p, t in zip(prompts, reference[0], strict=True)}
    oracle["corrupt"] = corrupt
    gen = spec(model)
    assert run(gen, prompts, max_tokens=30) == reference
    stats = gen.spec_stats
    assert stats.batch_drafts > 0 and stats.solo_entries == 0
    if corrupt is None:
        assert stats.acceptance_rate == 1.0 and stats.tokens_per_step > 3
    elif corrupt == 0:
        assert stats.accepted == 0


def test_seeded_sampling_batch_identical(spec_tiny, oracle):
    model, prompts = spec_tiny

    def samplers():
        return [make_request_sampler(SamplingParams(30, temperature=0.9, seed=7 + i))
                for i in range(len(prompts))]

    reference = run(plain(model), prompts, max_tokens=30, samplers=samplers())
    oracle["references"] = {tuple(p): t for p, t in zip(prompts, reference[0], strict=True)}
    gen = spec(model)
    assert run(gen, prompts, max_tokens=30, samplers=samplers()) == reference
    assert gen.spec_stats.accepted > 0


def test_a_late_arrival_joins_the_holey_batch(spec_tiny, oracle):
    model, prompts = spec_tiny
    reference = run(plain(model), prompts[:2], max_tokens=30, schedule={6: [prompts[3]]})
    oracle["references"] = {
        tuple(p): t for p, t in zip(prompts[:2] + [prompts[3]], reference[0], strict=True)}
    oracle["corrupt"] = 1  # holes in the rows before the newcomer arrives
    assert run(spec(model), prompts[:2], max_tokens=30, schedule={6: [prompts[3]]}) == reference


def test_stop_tokens_inside_an_accepted_draft(spec_tiny, oracle):
    model, prompts = spec_tiny
    reference = run(plain(model), prompts, max_tokens=30)
    stops = sorted({t[10] for t in reference[0]})  # each sequence ends on its 11th token
    gen_plain = BatchGenerator(model, stream=mx.default_stream(mx.default_device()),
                               stop_tokens=[[s] for s in stops])
    expected = run(gen_plain, prompts, max_tokens=30)
    oracle["references"] = {tuple(p): t for p, t in zip(prompts, reference[0], strict=True)}
    gen = spec(model, stop_tokens=[[s] for s in stops])
    assert run(gen, prompts, max_tokens=30) == expected
    assert all(reason == "stop" for reason in expected[1])


def test_opted_out_and_processor_rows_do_not_draft(spec_tiny, oracle):
    model, prompts = spec_tiny
    reference = run(plain(model), prompts, max_tokens=20)
    oracle["references"] = {tuple(p): t for p, t in zip(prompts, reference[0], strict=True)}
    gen = spec(model, allow=lambda uid: False)
    assert run(gen, prompts, max_tokens=20) == reference
    assert gen.spec_stats.drafts == 0
    gen = spec(model)
    processors = [[lambda tokens, logits: logits]] + [[]] * (len(prompts) - 1)
    assert run(gen, prompts, max_tokens=20, logits_processors=processors) == reference
    assert gen.spec_stats.batch_drafts == 0


def test_draft_width_keeps_a_quarter_of_the_slots_filled():
    assert draft_width([], 4) == 0
    assert draft_width([0, 0], 4) == 0
    assert draft_width([4, 4], 2) == 2
    assert draft_width([8, 0, 0, 0], 8) == 8  # 8 draft tokens in 4 x 8 slots
    assert draft_width([8] + [0] * 7, 8) == 0  # one row of eight cannot fill a quarter
    assert draft_width([8, 8] + [0] * 6, 8) == 8
    assert draft_width([8, 2] + [0] * 6, 8) == 2
    assert draft_width([3, 3, 0, 0], 8) == 3


def _filled(rows: int, length: int) -> BatchKVCache:
    cache = BatchKVCache([0] * rows)
    cache.update_and_fetch(mx.random.normal((rows, 2, length, 4)),
                           mx.random.normal((rows, 2, length, 4)))
    return cache


def test_holes_are_masked_extracted_out_and_survive_filter_and_extend():
    cache = HoleyBatchKVCache.adopt(_filled(2, 5))
    before = [cache.extract(i) for i in range(2)]
    k = mx.random.normal((2, 2, 3, 4))
    cache.update_and_fetch(k, k)
    cache.reject([2, 0])  # row 0 keeps 1 of 3 new entries, row 1 all three
    assert cache.offset.tolist() == [6, 8]
    mask = cache.make_mask(1)
    assert mask[0, 0, 0].tolist() == [True] * 6 + [False, False, True]
    assert mask[1, 0, 0].tolist() == [True] * 9
    row0 = cache.extract(0)
    assert row0.offset == 6
    assert mx.array_equal(row0.keys[:, :, :5], before[0].keys)
    assert mx.array_equal(row0.keys[:, :, 5], k[0:1, :, 0])
    assert cache.extract(1).offset == 8
    other = _filled(1, 3)
    cache.extend(other)
    assert cache.holes.shape == (3, 8) and cache.extract(2).offset == 3
    assert mx.array_equal(cache.extract(2).keys, other.extract(0).keys)
    cache.filter([0, 2])
    assert cache.extract(0).offset == 6 and cache.extract(1).offset == 3
    assert isinstance(cache.extract(0), KVCache)


def test_compaction_drops_the_holes(spec_tiny, monkeypatch):
    model, prompts = spec_tiny
    monkeypatch.setattr(HoleyBatchKVCache, "hole_fraction", lambda self: 0.9)
    gen = spec(model)
    assert run(gen, prompts, max_tokens=30) == run(plain(model), prompts, max_tokens=30)
    assert batch_speculation.DRAFT_BUDGET > 0


def test_first_tokens_come_from_a_plain_step(spec_tiny, oracle):
    """Rows that just left their prefill get their first token alone, at once, not after a
    verify pass of everyone's drafts (which would return it together with accepted drafts)."""
    model, prompts = spec_tiny
    reference = run(plain(model), prompts, max_tokens=30)
    oracle["references"] = {tuple(p): t for p, t in zip(prompts, reference[0], strict=True)}
    gen = spec(model)
    uids = gen.insert(prompts, max_tokens=[30] * len(prompts))
    first_call: dict[int, list[int]] = {}
    for _ in range(40):
        per_uid: dict[int, list[int]] = {}
        for r in gen.next()[1]:
            per_uid.setdefault(r.uid, []).append(r.token)
        for uid, tokens in per_uid.items():
            first_call.setdefault(uid, tokens)
    assert set(first_call) == set(uids)
    assert all(len(tokens) == 1 for tokens in first_call.values()), first_call
    assert gen.spec_stats.accepted > 0  # drafts were accepted in the steps after
