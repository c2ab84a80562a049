"""Tiny temperatures and repetition penalties stay finite (issue 23 item 12, engine side)."""

from __future__ import annotations

import mlx.core as mx

from app.engine.lm.processors import make_processors
from app.engine.lm.sampling import make_request_sampler
from app.engine.lm.types import SamplingParams


def test_tiny_temperature_samples_the_argmax() -> None:
    logprobs = mx.log(mx.softmax(mx.array([[0.1, 3.0, 0.2, 0.5]]), axis=-1))
    sampler = make_request_sampler(SamplingParams(max_tokens=1, temperature=1e-320, seed=1))
    assert [int(sampler(logprobs).item()) for _ in range(20)] == [1] * 20


def test_tiny_repetition_penalty_keeps_logits_finite() -> None:
    params = SamplingParams(max_tokens=1, repetition_penalty=1e-320)
    logits = mx.array([[1.5, -2.0, 0.5, 3.0]])
    for processor in make_processors(params, 2, set()):
        logits = processor(mx.array([0, 1]), logits)
    assert bool(mx.all(mx.isfinite(logits)).item())
