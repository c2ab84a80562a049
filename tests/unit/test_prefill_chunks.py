"""Long prompts are prefilled in time-bounded chunks (issue 23 item 7)."""

from __future__ import annotations

from app.engine.lm.chunking import MIN_CHUNK, PrefillBudget
from tests.unit.speculation_helpers import run, spec


def test_budget_sizes_chunks_by_measured_cost() -> None:
    budget = PrefillBudget(target_s=0.5, max_chunk=512)
    assert budget.chunk(1) == 128  # nothing measured yet
    budget.observe(padded_tokens=128, seconds=1.28)  # 10 ms per token
    assert budget.chunk(1) == 32 and budget.chunk(2) == MIN_CHUNK  # 50 and 25 fit
    budget.observe(padded_tokens=100, seconds=0.01)  # faster now: the average follows
    assert budget.chunk(1) == 64  # 99 fit: a power of two
    fast = PrefillBudget(target_s=0.5, max_chunk=512)
    fast.observe(padded_tokens=512, seconds=0.005)
    assert fast.chunk(8) == 512  # fast hardware keeps the stock chunks
    assert PrefillBudget(target_s=0, max_chunk=512).chunk(1) == 512


def test_short_prompt_is_not_behind_the_whole_long_prompt(spec_tiny) -> None:
    """A short prompt inserted during a long prefill gets its first token after at most two
    chunks of the long one; the long prompt's tokens are the stock ones."""
    model, prompts = spec_tiny
    long_prompt = (prompts[0] * 40)[:1000]
    gen = spec(model, num_draft=0, prefill_step_size=512, prefill_chunk_s=1e-9)
    long_uid = gen.insert([long_prompt], max_tokens=[4])[0]
    gen.next()  # the first chunk of the long prompt
    short_uid = gen.insert([prompts[2]], max_tokens=[4])[0]
    before = gen._counters.prompt_tokens
    for _ in range(20):
        _, generated = gen.next()
        if any(r.uid == short_uid for r in generated):
            break
    else:
        raise AssertionError("no first token for the short prompt")
    long_tokens = gen._counters.prompt_tokens - before - len(prompts[2]) + 1
    assert long_tokens <= 2 * MIN_CHUNK, long_tokens
    assert long_uid != short_uid

    want = run(spec(model, num_draft=0), [long_prompt], max_tokens=4)
    got = run(spec(model, num_draft=0, prefill_chunk_s=1e-9), [long_prompt], max_tokens=4)
    assert got == want
