"""app.engine.lm.speculative: prompt-lookup drafts never change greedy output."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.sample_utils import greedy_sampler

from app.engine.lm.drafting import Drafter, sample_until_mismatch
from app.engine.lm.sampling import make_request_sampler
from app.engine.lm.speculative import PromptLookup, accepted_prefix
from app.engine.lm.types import SamplingParams
from app.kernels.compile import optimize_model
from app.models.mlx_dir import load_mlx_dir
from tests.unit.speculation_helpers import plain, run, spec

# ---- drafting ------------------------------------------------------------------------


def test_prompt_lookup_prefers_longest_and_latest_match():
    context = [1, 2, 3, 9, 7, 2, 3, 4, 5, 8, 2, 3]
    lookup = PromptLookup(context, ngram_max=3, ngram_min=1)
    assert lookup.propose(2) == [4, 5]  # "2 3" last seen before "4 5"
    assert lookup.propose(0) == []
    assert PromptLookup(context + [4], ngram_max=3, ngram_min=1).propose(3) == [5, 8, 2]
    assert PromptLookup(context + [6], ngram_max=3, ngram_min=1).propose(3) == []  # unseen
    assert PromptLookup(context + [6, 2], ngram_max=3, ngram_min=1).propose(1) == [3]


def test_prompt_lookup_never_matches_its_own_suffix():
    assert PromptLookup([5, 6, 7], ngram_max=2, ngram_min=1).propose(4) == []
    assert PromptLookup([5, 5], ngram_max=2, ngram_min=1).propose(4) == [5]
    with pytest.raises(ValueError):
        PromptLookup([], ngram_max=1, ngram_min=2)


PASSAGE = list(range(10, 30))  # a quoted source: every token distinct
QUESTION = [1, 2]  # then the answer starts quoting PASSAGE


def quoting(answer: list[int]) -> PromptLookup:
    lookup = PromptLookup(PASSAGE + QUESTION + PASSAGE[:3])
    assert lookup.propose(4) == PASSAGE[3:7]  # found by n-gram, now following the copy
    lookup.extend(answer)
    return lookup


def test_copy_pointer_follows_a_quote():
    assert quoting(PASSAGE[3:8]).propose(4) == PASSAGE[8:12]


def test_copy_pointer_goes_on_after_an_inserted_token():
    # the answer inserts 99 (", they") where the source has none: the quote goes on
    assert quoting([99]).propose(3) == PASSAGE[3:6]
    assert quoting([99, 98]).propose(3) == PASSAGE[3:6]
    assert quoting([99, 98, 97]).propose(3) == []  # three strays: no longer copying


def test_copy_pointer_resyncs_after_a_substitution_or_a_skip():
    # substituted: 99 instead of PASSAGE[3], then the source again
    assert quoting([99, PASSAGE[4]]).propose(3) == PASSAGE[5:8]
    # skipped two source tokens
    assert quoting([PASSAGE[5]]).propose(3) == PASSAGE[6:9]


def test_nearest_occurrence_after_the_pointer_wins_over_the_latest():
    # "20" occurs in the quoted passage and again later, followed by 60
    context = PASSAGE + [20, 60, 61] + QUESTION + PASSAGE[:3]
    assert PromptLookup(context + [99, 20], ngram_min=1).propose(2) == [60, 61]  # latest
    lookup = PromptLookup(context, ngram_min=1)
    assert lookup.propose(2) == PASSAGE[3:5]  # copying from the passage now
    lookup.extend([99, 20])  # one stray token, then a jump beyond the resync window
    assert lookup.propose(2) == [21, 22]  # "20" nearest after the pointer: in the passage


def test_copy_pointer_is_dropped_after_too_many_strays():
    lookup = quoting([5, 42, 43])
    assert lookup.pointer is None and lookup.propose(3) == []


def test_accepted_prefix():
    assert accepted_prefix([], [4]) == 0
    assert accepted_prefix([4, 5, 6], [4, 5, 6, 7]) == 3
    assert accepted_prefix([4, 0, 6], [4, 5, 6, 7]) == 1
    assert accepted_prefix([0], [4, 5]) == 0


# ---- generation ----------------------------------------------------------------------


def test_greedy_identical_alone(spec_tiny):
    model, prompts = spec_tiny
    for prompt in prompts:
        gen = spec(model)
        assert run(gen, [prompt]) == run(plain(model), [prompt])
        assert gen.spec_stats.solo_entries == 1 and gen.spec_stats.solo_steps > 0


@pytest.mark.parametrize("corrupt", [None, 0, 2])
def test_verified_drafts_identical(spec_tiny, oracle, corrupt):
    model, prompts = spec_tiny
    for prompt in prompts[:2]:
        reference = run(plain(model), [prompt], max_tokens=30)
        oracle.update(references={tuple(prompt): reference[0][0]}, corrupt=corrupt)
        gen = spec(model, num_draft=5)
        assert run(gen, [prompt], max_tokens=30) == reference
        stats = gen.spec_stats
        assert stats.drafted > 0
        if corrupt is None:
            assert stats.acceptance_rate == 1.0 and stats.tokens_per_step > 4
        elif corrupt == 0:  # all rejected: drafting pauses for 4, then 8 steps
            assert stats.accepted == 0 and stats.drafted <= 9 * 5  # 3 + 4 + 3 + 8 + 3 + 16 steps
        else:
            assert 0 < stats.acceptance_rate < 1 and stats.tokens_per_step > 2


def test_stop_token_and_max_tokens_inside_a_draft(spec_tiny, oracle):
    model, prompts = spec_tiny
    prompt = prompts[2]
    tokens = run(plain(model), [prompt], max_tokens=30)[0][0]
    oracle.update(references={tuple(prompt): tokens})
    stop = next(t for i, t in enumerate(tokens) if i >= 3 and t not in tokens[:i])
    stops = {"stop_tokens": [[stop]]}
    expected = run(plain(model, **stops), [prompt], max_tokens=30)
    assert expected[1] == ["stop"] and len(expected[0][0]) < 30
    assert run(spec(model, num_draft=8, **stops), [prompt], max_tokens=30) == expected
    for limit in (2, 3, 7):
        assert run(spec(model, num_draft=8), [prompt], max_tokens=limit) == (
            [tokens[:limit]], ["length"])


def test_batch_handoff_both_ways(spec_tiny):
    model, prompts = spec_tiny
    schedule = {4: [prompts[2]], 9: [prompts[3]]}
    expected = run(plain(model), [prompts[0]], 40, schedule=dict(schedule))
    gen = spec(model)
    assert run(gen, [prompts[0]], 40, schedule=dict(schedule)) == expected
    assert gen.spec_stats.solo_exits >= 1 and gen.spec_stats.solo_entries >= 2
    # and each equals its own unbatched greedy text
    for prompt, tokens in zip([prompts[0], prompts[2], prompts[3]], expected[0], strict=True):
        assert run(plain(model), [prompt], 40)[0][0] == tokens


def test_remove_and_extract_a_solo_sequence(spec_tiny):
    model, prompts = spec_tiny
    gen = spec(model)
    uid = gen.insert([prompts[1]], max_tokens=[50])[0]
    seen = 0
    while seen < 6:
        seen += len(gen.next()[1])
    cache, tokens = gen.extract_cache([uid])[uid]
    # the cache holds the prompt and every returned token but the last (not fed yet)
    assert cache[0].offset == len(tokens) == len(prompts[1]) + seen - 1
    assert gen.prompt_cache_nbytes > 0
    removed = gen.remove([uid], return_prompt_caches=True)
    assert removed[uid][1] == tokens
    assert gen.next() == ([], []) and gen.prompt_cache_nbytes == 0


@pytest.mark.parametrize("corrupt", [None, 1])
def test_seeded_sampling_gives_the_batch_paths_text(spec_tiny, oracle, corrupt):
    model, prompts = spec_tiny
    params = SamplingParams(max_tokens=20, temperature=0.8, top_p=0.95, seed=11)

    def sampled(gen, prompt):
        return run(gen, [prompt], 20, samplers=[make_request_sampler(params)])

    for prompt in prompts[:3]:
        expected = sampled(plain(model), prompt)
        oracle.update(references={tuple(prompt): expected[0][0]}, corrupt=corrupt)
        gen = spec(model, num_draft=4)
        assert sampled(gen, prompt) == expected
        assert gen.spec_stats.solo_entries == 1
        if corrupt is None:
            assert gen.spec_stats.acceptance_rate == 1.0


def test_sample_until_mismatch_calls_the_sampler_once_per_token():
    calls: list[int] = []
    script = [7, 8, 2, 5]

    def sampler(row: mx.array) -> mx.array:
        calls.append(row.shape[0])
        return mx.array([script[len(calls) - 1]])

    rows = mx.zeros((4, 10))
    assert sample_until_mismatch(sampler, rows, [7, 8, 9]) == [7, 8, 2]
    assert calls == [1, 1, 1]
    calls.clear()
    script = [7, 8, 9, 4]
    assert sample_until_mismatch(sampler, rows, [7, 8, 9]) == [7, 8, 9, 4]


def test_logits_processors_stay_in_the_batch(spec_tiny):
    model, prompts = spec_tiny
    processors = [[lambda tokens, logits: logits]]
    gen = spec(model)
    assert run(gen, prompts[:1], logits_processors=processors) == run(plain(model), prompts[:1])
    assert gen.spec_stats.solo_entries == 0


def test_compiled_and_speculative_together(tiny_llama_dir: Path, spec_tiny):
    model, prompts = spec_tiny
    fast = load_mlx_dir(tiny_llama_dir).model
    optimize_model(fast)
    for prompt in prompts:
        assert run(spec(fast), [prompt]) == run(plain(model), [prompt])
    assert run(spec(fast), prompts) == run(plain(model), prompts)


def test_per_sequence_opt_out(spec_tiny):
    model, prompts = spec_tiny
    gen = spec(model, allow=lambda uid: False)
    assert run(gen, prompts[:1]) == run(plain(model), prompts[:1])
    assert gen.spec_stats.solo_entries == 0
    off = spec(model, num_draft=0)
    run(off, prompts[:1])
    assert off.spec_stats.solo_entries == 0


def _drafter(tokens: list[int], pending: int, sampler) -> Drafter:
    return Drafter(PromptLookup(tokens + [pending]), sampled=sampler is not greedy_sampler)


def test_rejected_drafts_back_off():
    solo = _drafter([1, 2, 3, 1, 2], 3, greedy_sampler)
    assert solo.draft(4) == [1, 2, 3]
    for _ in range(3):
        solo.verified(3, 0)
    assert [solo.draft(4) for _ in range(5)] == [[]] * 4 + [[1, 2, 3]]
    for _ in range(3):
        solo.verified(3, 0)
    assert solo.pause == 8
    solo.verified(0, 0)  # no draft: no change
    solo.pause = 0
    solo.verified(3, 1)
    assert (solo.misses, solo.backoff) == (0, 4)


def test_sampled_drafts_start_short_and_grow():
    solo = _drafter(list(range(20)) + [0, 1], 2, make_request_sampler(SamplingParams(8)))
    assert solo.draft(8) == [3, 4]
    solo.verified(2, 2)
    assert solo.draft(8) == [3, 4, 5, 6]
    solo.verified(4, 1)  # partly accepted: keep the length
    assert len(solo.draft(8)) == 4
    solo.verified(4, 0)  # rejected: short again
    assert solo.draft(8) == [3, 4]
