"""app.engine.lm.eager_tokens: on the CPU a decode step returns its tokens without first starting
the next forward pass, and the tokens are exactly mlx-lm's."""

from __future__ import annotations

import importlib

import mlx.core as mx
import pytest

from app.engine.lm.eager_tokens import EagerTokenBatch
from app.engine.lm.phases import PhasedBatchGenerator
from app.engine.lm.processors import make_processors
from app.engine.lm.sampling import make_request_sampler
from app.engine.lm.types import SamplingParams
from tests.unit.speculation_helpers import plain, run

mlx_generate = importlib.import_module("mlx_lm.generate")


def _phased(model, **kw) -> PhasedBatchGenerator:
    return PhasedBatchGenerator(model, stream=mx.default_stream(mx.default_device()), **kw)


def _insert_args(prompts: list[list[int]]) -> dict:
    """Mixed rows: greedy, seeded samples, a repetition penalty and a logit bias."""
    params = [SamplingParams(20, temperature=0.0),
              SamplingParams(20, temperature=0.8, seed=3, repetition_penalty=1.3),
              SamplingParams(20, temperature=0.0, logit_bias=((7, 5.0),)),
              SamplingParams(20, temperature=1.1, seed=9, presence_penalty=0.5)]
    params = (params * len(prompts))[: len(prompts)]
    return {
        "samplers": [make_request_sampler(p) for p in params],
        "logits_processors": [make_processors(p, len(t), set())
                              for p, t in zip(params, prompts, strict=True)],
    }


def test_cpu_generators_use_it(spec_tiny) -> None:
    model, _ = spec_tiny
    batch = _phased(model)._generation_batch
    assert isinstance(batch, EagerTokenBatch) and batch.eager
    assert not _phased(model, eager_tokens=False)._generation_batch.eager


@pytest.mark.parametrize("late", [False, True])
def test_same_tokens_as_mlx_lm(spec_tiny, late: bool) -> None:
    model, prompts = spec_tiny
    schedule = {5: [prompts[3]]} if late else None
    first = prompts[:3] if late else prompts
    want = run(plain(model), first, max_tokens=20, schedule=dict(schedule or {}),
               **_insert_args(first))
    got = run(_phased(model, split_phases=False), first, max_tokens=20,
              schedule=dict(schedule or {}), **_insert_args(first))
    assert got == want


def test_a_step_starts_no_pass_ahead(spec_tiny, monkeypatch) -> None:
    """Stock steps start the next pass (async_eval) before handing out the tokens; on the CPU
    that blocks until most of the pass has run, so the tokens came one pass late."""
    model, prompts = spec_tiny
    started: list[int] = []
    real = mlx_generate.mx.async_eval
    monkeypatch.setattr(mlx_generate.mx, "async_eval",
                        lambda *a: started.append(1) or real(*a))
    for eager, expect_ahead in ((True, False), (False, True)):
        gen = _phased(model, eager_tokens=eager, split_phases=False)
        gen.insert(prompts[:2], max_tokens=[12, 12])
        while not any(r.token is not None for r in gen.next()[1]):
            pass
        started.clear()
        assert gen.next()[1]
        assert bool(started) is expect_ahead
