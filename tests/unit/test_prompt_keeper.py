"""Prompts cached at the end of their prefill, shared prefills, tenants, on a tiny llama."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.engine.lm.prompt_keeper import MIN_SHARED, common_prefix
from app.engine.lm.types import Finished, GenerationRequest, SamplingParams, TextDelta
from tests.unit.test_engine import _engine

LONG = SamplingParams(max_tokens=150, temperature=0, ignore_eos=True)
SHORT = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)


def _prompt(start: int, n: int) -> list[int]:
    return [(start + 7 * i) % 200 + 10 for i in range(n)]


async def _finish(request: GenerationRequest) -> Finished:
    while True:
        event = await asyncio.wait_for(request.events.get(), 120)
        if isinstance(event, Finished):
            return event
        assert isinstance(event, TextDelta | Finished) or hasattr(event, "done"), event


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix(list(range(1000)), list(range(1000))) == 1000


def test_a_prompt_hits_while_the_first_request_is_still_generating(tiny_llama_dir: Path):
    engine = _engine(tiny_llama_dir, max_batch_size=4, prefix_cache_bytes=64 << 20)
    system = _prompt(1, MIN_SHARED + 40)
    try:
        async def main():
            loop = asyncio.get_running_loop()
            first = GenerationRequest(system + [50, 51], LONG, loop)
            engine.submit(first)
            while not isinstance(await first.events.get(), TextDelta):
                pass  # first token out: its prompt's prefill is over
            second = GenerationRequest(system + [60, 61, 62], SHORT, loop)
            engine.submit(second)
            done = await _finish(second)
            so_far = [first.events.get_nowait() for _ in range(first.events.qsize())]
            assert not any(isinstance(e, Finished) for e in so_far)  # still generating
            engine.cancel(first)
            return done

        done = asyncio.run(main())
        assert done.cached_tokens >= len(system)
    finally:
        engine.stop()


def _serve(engine, prompts: list[list[int]], salts: list[str], together: bool) -> list:
    """Finish ``prompts`` (all queued at once, or one after another) on ``engine``."""
    async def main():
        loop = asyncio.get_running_loop()
        requests = [GenerationRequest(p, SHORT, loop, cache_salt=s)
                    for p, s in zip(prompts, salts, strict=True)]
        if together:
            for request in requests:
                engine.submit(request)
            return await asyncio.gather(*[_finish(r) for r in requests])
        out = []
        for request in requests:
            engine.submit(request)
            out.append(await _finish(request))
        return out

    try:
        return asyncio.run(main())
    finally:
        engine.stop()


def test_requests_sharing_a_long_prefix_wait_for_one_prefill(tiny_llama_dir: Path):
    engine = _engine(tiny_llama_dir, max_batch_size=4, prefix_cache_bytes=64 << 20)
    shared = _prompt(3, MIN_SHARED + 100)
    prompts = [shared + [20 + i, 30 + i] for i in range(3)]
    results = _serve(engine, prompts, [""] * 3, together=True)
    assert sorted(r.cached_tokens for r in results)[1:] == [len(shared)] * 2


def test_different_salts_do_not_share(tiny_llama_dir: Path):
    engine = _engine(tiny_llama_dir, max_batch_size=4, prefix_cache_bytes=64 << 20)
    prompt = _prompt(5, 80) + [1]
    first_a, b, second_a = _serve(engine, [prompt] * 3, ["a", "b", "a"], together=False)
    assert first_a.cached_tokens == 0 and b.cached_tokens == 0
    assert second_a.cached_tokens >= len(prompt) - 1
