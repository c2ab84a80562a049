"""Decode steps are not held behind other prompts' prefill; bursts are admitted together."""

from __future__ import annotations

import asyncio
import threading
import time

from app.engine.lm.types import GenerationRequest, SamplingParams
from app.engine.lm.worker import ModelEngine
from tests.unit.speculation_helpers import plain, run, spec


def _drive(gen, first: list[int], late: list[list[int]], at_step: int, max_tokens: int = 12):
    """Run ``first`` alone; insert ``late`` before step ``at_step``. Returns per call:
    (uids with a generated token, uids with prompt progress, uids inserted so far)."""
    uids = gen.insert([first], max_tokens=[max_tokens])
    calls, done = [], set()
    for step in range(500):
        if step == at_step:
            uids += gen.insert(late, max_tokens=[max_tokens] * len(late))
        prompts, generated = gen.next()
        calls.append(({r.uid for r in generated}, {r.uid for r in prompts}, list(uids)))
        done |= {r.uid for r in generated if r.finish_reason}
        if step > at_step and done == set(uids):
            return calls
    raise AssertionError("did not finish")


def test_split_phases_give_the_stock_tokens(spec_tiny) -> None:
    model, prompts = spec_tiny
    schedule = {3: [prompts[1], prompts[2]], 6: [prompts[3]]}
    want = run(plain(model), [prompts[0]], schedule=dict(schedule))
    for split in (True, False):
        gen = spec(model, num_draft=0, split_phases=split)
        assert run(gen, [prompts[0]], schedule=dict(schedule)) == want


def test_running_sequence_is_not_stepped_with_a_prefill(spec_tiny) -> None:
    model, prompts = spec_tiny
    calls = _drive(spec(model, num_draft=0), prompts[0], prompts[1:3], at_step=3)
    running = calls[2][2][0]
    for generated, prompting, _ in calls[3:]:
        # every call either prefills or decodes, never both
        assert not (generated and prompting), (generated, prompting)
    assert any(running in generated for generated, _, _ in calls[3:6])

    stock = _drive(spec(model, num_draft=0, split_phases=False), prompts[0], prompts[1:3], 3)
    assert any(generated and prompting for generated, prompting, _ in stock[3:])


def _first_calls(gen, prompts: list[list[int]]) -> tuple[dict[int, int], dict[int, int], list]:
    """Run prompts[0] alone, insert prompts[1:3] at call 3; per uid, the call of its first
    generated token and of its first prompt progress, and the uids in insertion order."""
    first_token: dict[int, int] = {}
    first_progress: dict[int, int] = {}
    uids = gen.insert([prompts[0]], max_tokens=[16])
    for call in range(60):
        if call == 3:
            uids += gen.insert([prompts[1], prompts[2]], max_tokens=[16, 16])
        prompt_responses, generated = gen.next()
        for r in generated:
            first_token.setdefault(r.uid, call)
        for r in prompt_responses:
            first_progress.setdefault(r.uid, call)
    return first_token, first_progress, uids


def test_first_tokens_come_before_the_next_prompts_prefill(spec_tiny) -> None:
    """B finished its prefill while C waits: B's first token is returned before C's prefill."""
    model, prompts = spec_tiny
    # one prompt per prefill pass
    first_token, first_progress, uids = _first_calls(
        spec(model, num_draft=0, prefill_batch_size=1), prompts
    )
    assert first_token[uids[1]] < first_progress[uids[2]]
    first_token, first_progress, uids = _first_calls(
        spec(model, num_draft=0, prefill_batch_size=1, split_phases=False), prompts
    )
    assert first_token[uids[1]] >= first_progress[uids[2]]  # the stock order this fixes


def test_idle_engine_gathers_a_burst() -> None:
    engine = ModelEngine(lambda: None, admission_gap_s=0.15, max_batch_size=8)
    loop = asyncio.new_event_loop()
    params = SamplingParams(max_tokens=1, temperature=0)
    try:
        def arrive(n: int, spacing: float) -> None:
            for _ in range(n):
                time.sleep(spacing)
                engine.submit(GenerationRequest([1, 2, 3], params, loop))

        engine.submit(GenerationRequest([1, 2, 3], params, loop))
        feeder = threading.Thread(target=arrive, args=(4, 0.03))
        feeder.start()
        started = time.monotonic()
        with engine._cond:
            engine._gather_burst()
        feeder.join()
        assert len(engine._waiting) == 5  # all arrived within the gap of the previous one
        assert time.monotonic() - started < 1.0

        engine._waiting.clear()
        engine.submit(GenerationRequest([1, 2, 3], params, loop))
        started = time.monotonic()
        with engine._cond:
            engine._gather_burst()
        assert 0.1 < time.monotonic() - started < 0.5  # a lone request waits one gap only
    finally:
        loop.close()


def test_finished_prefills_join_the_batch_before_the_next_decode_step(spec_tiny) -> None:
    """A prefill that ends while others decode: the next call moves those sequences into the
    batch (no decode step of the others first), and the call after returns their first tokens."""
    model, prompts = spec_tiny
    calls = _drive(spec(model, num_draft=0), prompts[0], prompts[1:3], at_step=3, max_tokens=20)
    late = set(calls[-1][2][1:])
    prefill = next(i for i, (_, prompting, _) in enumerate(calls) if late <= prompting)
    assert calls[prefill + 1][0] == set()  # the move: nobody steps
    first = next(i for i, (generated, _, _) in enumerate(calls) if late & generated)
    assert first == prefill + 2
    assert late <= calls[first][0]
