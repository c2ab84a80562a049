"""The continuous-batching engine on a tiny random llama (no HTTP)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from app.engine.types import Failed, Finished, GenerationRequest, SamplingParams, TextDelta
from app.engine.worker import ModelEngine, QueueFullError


def _engine(model_dir: Path, **kwargs) -> ModelEngine:
    from app.models.mlx_dir import load_mlx_dir

    engine = ModelEngine(lambda: load_mlx_dir(model_dir), name="tiny", **kwargs)
    engine.start().result(timeout=60)
    return engine


@pytest.fixture(scope="module")
def engine(tiny_llama_dir: Path):
    engine = _engine(tiny_llama_dir, max_batch_size=8)
    yield engine
    engine.stop()


async def _run(engine: ModelEngine, prompt: list[int], params: SamplingParams) -> tuple[str, str]:
    request = GenerationRequest(prompt, params, asyncio.get_running_loop())
    engine.submit(request)
    text = ""
    while True:
        event = await asyncio.wait_for(request.events.get(), 60)
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finished):
            return text, event.finish_reason
        elif isinstance(event, Failed):
            raise AssertionError(event.message)


def _prompts(engine: ModelEngine) -> list[list[int]]:
    texts = ["The quick brown fox", "What is the capital", "Hello world! This", "Numbers: 0 1 2"]
    return [engine.tokenizer.encode(t, add_special_tokens=False) for t in texts]


def test_batched_greedy_equals_unbatched(engine: ModelEngine):
    params = SamplingParams(max_tokens=12, temperature=0)
    prompts = _prompts(engine)

    async def main():
        alone = [await _run(engine, p, params) for p in prompts]
        together = await asyncio.gather(*[_run(engine, p, params) for p in prompts])
        return alone, together

    alone, together = asyncio.run(main())
    assert alone == list(together)
    assert all(reason == "length" for _, reason in alone)
    assert len({text for text, _ in alone}) == len(prompts)
    assert engine.stats.max_running >= 2  # they really shared a batch


def test_seeded_sampling_is_the_same_alone_and_batched(engine: ModelEngine):
    prompts = _prompts(engine)
    seeded = SamplingParams(max_tokens=10, temperature=1.0, seed=42)

    async def main():
        alone = await _run(engine, prompts[0], seeded)
        others = [
            _run(engine, p, SamplingParams(max_tokens=10, temperature=1.0)) for p in prompts[1:]
        ]
        batched, *_ = await asyncio.gather(_run(engine, prompts[0], seeded), *others)
        other_seed = await _run(engine, prompts[0], replace(seeded, seed=43))
        return alone, batched, other_seed

    alone, batched, other_seed = asyncio.run(main())
    assert alone == batched
    assert other_seed != alone


def test_stop_string_ends_generation_without_emitting_it(engine: ModelEngine):
    prompt = _prompts(engine)[0]

    async def main():
        full, _ = await _run(engine, prompt, SamplingParams(max_tokens=12, temperature=0))
        stop = full[len(full) // 2 : len(full) // 2 + 3]
        cut, reason = await _run(
            engine, prompt, SamplingParams(max_tokens=12, temperature=0, stop=(stop,))
        )
        return full, stop, cut, reason

    full, stop, cut, reason = asyncio.run(main())
    assert reason == "stop"
    assert cut == full[: full.index(stop)]


def test_cancelled_request_frees_its_slot(tiny_llama_dir: Path):
    engine = _engine(tiny_llama_dir, max_batch_size=1, queue_depth=4)
    try:
        async def main():
            loop = asyncio.get_running_loop()
            prompt = _prompts(engine)[0]
            long = GenerationRequest(prompt, SamplingParams(max_tokens=400, temperature=0), loop)
            engine.submit(long)
            await asyncio.wait_for(long.events.get(), 30)  # it is running
            engine.cancel(long)
            for _ in range(200):
                if engine.stats.running == 0:
                    break
                await asyncio.sleep(0.01)
            assert engine.stats.running == 0
            quick = await _run(engine, prompt, SamplingParams(max_tokens=3, temperature=0))
            return quick

        text, reason = asyncio.run(main())
        assert reason == "length"
    finally:
        engine.stop()


def test_queue_full_is_refused_at_once(tiny_llama_dir: Path):
    engine = _engine(tiny_llama_dir, max_batch_size=1, queue_depth=1)
    try:
        async def main():
            loop = asyncio.get_running_loop()
            prompt = _prompts(engine)[0]
            params = SamplingParams(max_tokens=300, temperature=0)
            running = GenerationRequest(prompt, params, loop)
            engine.submit(running)
            await asyncio.wait_for(running.events.get(), 30)
            waiting = GenerationRequest(prompt, params, loop)
            engine.submit(waiting)
            with pytest.raises(QueueFullError):
                engine.submit(GenerationRequest(prompt, params, loop))
            engine.cancel(running)
            engine.cancel(waiting)

        asyncio.run(main())
    finally:
        engine.stop()
