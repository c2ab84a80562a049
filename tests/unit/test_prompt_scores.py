"""Prompt logprobs taken from the engine's prefill (app.engine.lm.prompt_scores)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import mlx.core as mx
import pytest

from app.engine.lm.types import (
    Failed,
    Finished,
    GenerationRequest,
    PromptLogprobs,
    SamplingParams,
    TextDelta,
)
from app.engine.lm.worker import ModelEngine

TEXTS = ["The quick brown fox jumps over the lazy dog.", "What is the capital of France?",
         "Hello", "Numbers: 0 1 2 3 4 5 6 7 8 9, and punctuation"]


@pytest.fixture(scope="module")
def engine(tiny_llama_dir: Path):
    from app.models.mlx_dir import load_mlx_dir

    # a small prefill step: long prompts are prefilled in several chunks
    engine = ModelEngine(lambda: load_mlx_dir(tiny_llama_dir), name="tiny", max_batch_size=8,
                         prefill_step_size=7, prefix_cache_bytes=1 << 20)
    engine.start().result(timeout=60)
    yield engine
    engine.stop()


def _reference(engine: ModelEngine, prompt: list[int]) -> list[float]:
    """Each prompt token's logprob from one plain forward pass over the whole prompt."""
    logits = engine.model(mx.array([prompt]))[0].astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return [logprobs[i - 1, t].item() for i, t in enumerate(prompt) if i > 0]


async def _run(engine: ModelEngine, prompt: list[int], params: SamplingParams) -> list:
    request = GenerationRequest(prompt, params, asyncio.get_running_loop())
    engine.submit(request)
    events = []
    while True:
        event = await asyncio.wait_for(request.events.get(), 60)
        if isinstance(event, Failed):
            raise AssertionError(event.message)
        if not isinstance(event, PromptLogprobs | TextDelta | Finished):
            continue
        events.append(event)
        if isinstance(event, Finished):
            return events


def _check(engine: ModelEngine, prompt: list[int], scores: list, top: int) -> None:
    assert len(scores) == len(prompt) and scores[0] is None
    assert [s.token_id for s in scores[1:]] == prompt[1:]
    for score, expected in zip(scores[1:], _reference(engine, prompt), strict=True):
        assert score.logprob == pytest.approx(expected, abs=1e-4)
        assert len(score.top) == top
        values = [v for _, v in score.top]
        assert values == sorted(values, reverse=True)
        assert top == 0 or values[0] >= score.logprob - 1e-6


def test_prompt_logprobs_match_a_plain_forward_pass_alone_and_batched(engine: ModelEngine):
    prompts = [engine.tokenizer.encode(t, add_special_tokens=False) for t in TEXTS]
    assert max(map(len, prompts)) > 7 * 2  # several prefill chunks
    params = SamplingParams(max_tokens=3, temperature=0, prompt_logprobs=2)
    plain = SamplingParams(max_tokens=3, temperature=0)

    async def main():
        alone = await _run(engine, prompts[0], params)
        # scored rows share prefill passes with each other and with an unscored row
        together = await asyncio.gather(*[_run(engine, p, params) for p in prompts],
                                        _run(engine, prompts[1], plain))
        again = await _run(engine, prompts[0], params)  # its prefix is cached now
        unscored = await _run(engine, prompts[0], plain)
        return alone, together, again, unscored

    alone, together, again, unscored = asyncio.run(main())
    for prompt, events in zip([prompts[0], *prompts, prompts[0]], [alone, *together[:-1], again],
                              strict=True):
        assert isinstance(events[0], PromptLogprobs)  # before any text
        _check(engine, prompt, events[0].logprobs, top=2)
        assert isinstance(events[-1], Finished) and events[-1].completion_tokens == 3
    assert not any(isinstance(e, PromptLogprobs) for e in together[-1])
    # generation is the same with or without scoring
    text = "".join(e.text for e in alone if isinstance(e, TextDelta))
    assert text == "".join(e.text for e in unscored if isinstance(e, TextDelta))
    assert not engine._generator.prompt_scores.watched


def test_max_tokens_zero_scores_the_prompt_and_generates_nothing(engine: ModelEngine):
    prompt = engine.tokenizer.encode(TEXTS[0], add_special_tokens=False)

    async def main():
        scored = await _run(engine, prompt, SamplingParams(max_tokens=0, prompt_logprobs=0))
        single = await _run(engine, prompt[:1], SamplingParams(max_tokens=0, prompt_logprobs=0))
        bare = await _run(engine, prompt, SamplingParams(max_tokens=0))
        return scored, single, bare

    scored, single, bare = asyncio.run(main())
    assert [type(e) for e in scored] == [PromptLogprobs, Finished]
    _check(engine, prompt, scored[0].logprobs, top=0)
    end = scored[-1]
    assert (end.finish_reason, end.completion_tokens, end.prompt_tokens) == (
        "length", 0, len(prompt))
    assert single[0].logprobs == [None]
    assert [type(e) for e in bare] == [Finished] and bare[0].completion_tokens == 0
    assert engine.stats.running == 0
