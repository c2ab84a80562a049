"""The continuous-batching engine on a tiny random llama (no HTTP)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from app.engine.lm.types import Failed, Finished, GenerationRequest, SamplingParams, TextDelta
from app.engine.lm.worker import ModelEngine, QueueFullError
from tests.unit.waiting import wait_until


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


def test_prefix_cache_hit_on_second_turn_gives_same_text(tiny_llama_dir: Path):
    engine = _engine(tiny_llama_dir, max_batch_size=4, prefix_cache_bytes=64 << 20)
    try:
        params = SamplingParams(max_tokens=8, temperature=0)
        tok = engine.tokenizer
        turn1 = tok.encode("The quick brown fox jumps over the lazy dog.", add_special_tokens=False)

        async def main():
            reply, _ = await _run(engine, turn1, params)
            turn2 = turn1 + tok.encode(reply + " What is the capital", add_special_tokens=False)
            hits_before = engine.prefix_cache.stats.hits
            second = await _run(engine, turn2, params)
            hits_after = engine.prefix_cache.stats.hits
            cold = _engine(tiny_llama_dir, max_batch_size=4)  # no prefix cache at all
            try:
                reference = await _run(cold, turn2, params)
            finally:
                cold.stop()
            return hits_before, hits_after, second, reference

        hits_before, hits_after, second, reference = asyncio.run(main())
        assert hits_after == hits_before + 1
        assert engine.prefix_cache.stats.cached_tokens >= len(turn1)
        assert second == reference
    finally:
        engine.stop()


def test_a_finishing_sequence_does_not_hold_back_the_others_tokens(tiny_llama_dir: Path):
    """Storing a finished sequence's KV cache evaluates it (with eager tokens: the batch's next
    pass); it waits until every row's token of that step has been handed out."""
    engine = _engine(tiny_llama_dir, max_batch_size=4, prefix_cache_bytes=64 << 20)
    log: list[tuple[str, int]] = []
    store = engine.prefix_cache.store
    engine.fault_hook = lambda request, n: log.append(("token", engine.stats.steps))

    def logged_store(tokens, cache, salt=""):
        log.append(("store", engine.stats.steps))
        store(tokens, cache, salt)

    engine.prefix_cache.store = logged_store
    try:
        short, long = _prompts(engine)[:2]

        async def main():
            return await asyncio.gather(
                _run(engine, short, SamplingParams(max_tokens=3, temperature=0)),
                _run(engine, long, SamplingParams(max_tokens=12, temperature=0)),
            )

        asyncio.run(main())
    finally:
        engine.stop()  # the last store may follow the last reply's events; stop waits for it
    stores = [i for i, (kind, _) in enumerate(log) if kind == "store"]
    assert stores, "no cache was stored"
    for i in stores:
        step = log[i][1]
        assert ("token", step) not in log[i + 1:], f"a token of step {step} came after a store"


def test_exception_in_one_request_fails_only_that_request(engine: ModelEngine):
    prompts = _prompts(engine)
    params = SamplingParams(max_tokens=10, temperature=0)

    def explode(request: GenerationRequest, produced: int) -> None:
        if request.request_id == "doomed" and produced == 3:
            raise RuntimeError("injected fault")

    async def main():
        loop = asyncio.get_running_loop()
        doomed = GenerationRequest(prompts[0], params, loop, request_id="doomed")
        engine.submit(doomed)
        healthy = [_run(engine, p, params) for p in prompts[1:]]
        events = []
        results = await asyncio.gather(*healthy)
        while True:
            event = await asyncio.wait_for(doomed.events.get(), 30)
            events.append(event)
            if isinstance(event, Failed | Finished):
                break
        return results, events

    engine.fault_hook = explode
    try:
        results, events = asyncio.run(main())
    finally:
        engine.fault_hook = None
    assert isinstance(events[-1], Failed) and "injected fault" in events[-1].message
    assert all(reason == "length" for _, reason in results)
    for _ in range(100):  # the worker updates its counters right after the last event
        if engine.stats.running == 0:
            break
        time.sleep(0.01)
    assert engine.stats.running == 0


def test_a_request_that_cannot_be_admitted_fails_alone(engine: ModelEngine, monkeypatch):
    prompts = _prompts(engine)
    params = SamplingParams(max_tokens=30, temperature=0)
    original = engine._processors

    def broken(request, stop_ids):
        if request.request_id == "unadmittable":
            raise RuntimeError("cannot build processors")
        return original(request, stop_ids)

    async def main():
        loop = asyncio.get_running_loop()
        healthy = asyncio.ensure_future(_run(engine, prompts[1], params))
        await asyncio.sleep(0.05)
        doomed = GenerationRequest(prompts[0], params, loop, request_id="unadmittable")
        engine.submit(doomed)
        event = await asyncio.wait_for(doomed.events.get(), 30)
        return event, await healthy

    monkeypatch.setattr(engine, "_processors", broken)
    event, (text, reason) = asyncio.run(main())
    assert isinstance(event, Failed)
    assert reason == "length" and text


_EXIT_SCRIPT = """
import asyncio, sys
from app.engine.lm.types import Finished, GenerationRequest, SamplingParams
from app.engine.lm.worker import ModelEngine
from app.models.mlx_dir import load_mlx_dir

engine = ModelEngine(lambda: load_mlx_dir(sys.argv[1]), name="tiny")
engine.start().result(timeout=60)

async def main():
    params = SamplingParams(max_tokens=4, temperature=0)
    loop = asyncio.get_running_loop()
    requests = [GenerationRequest([1, 2, 3, i], params, loop) for i in range(3)]
    for request in requests:
        engine.submit(request)
    for request in requests:
        while not isinstance(await asyncio.wait_for(request.events.get(), 60), Finished):
            pass

asyncio.run(main())
engine.stop()
print("finished")
"""


def test_process_exits_cleanly_after_an_engine_ran(tiny_llama_dir: Path):
    """The engine thread frees its MLX compile traces before it ends: freed later, during
    interpreter shutdown, they aborted the process ("terminate called without an active
    exception", exit status 134)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, str(tiny_llama_dir)],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "finished" in result.stdout


def test_an_idle_engine_keeps_sampling_the_machine_load(tiny_llama_dir: Path, monkeypatch) -> None:
    """The BLAS governor judges a burst by the last second, so an idle engine must keep
    feeding it samples (it used to take none between its last step and the next burst)."""
    import contextlib

    from app.engine.lm import worker
    from app.models.mlx_dir import load_mlx_dir

    class Governor:
        observed = 0

        def computing(self, who, weight=1):
            return contextlib.nullcontext()

        def tick(self, who, sync):
            return 1

        def rest(self, who, sync):
            pass

        def observe(self):
            self.observed += 1

    monkeypatch.setattr(worker, "IDLE_WAKE_S", 0.02)
    engine = ModelEngine(lambda: load_mlx_dir(tiny_llama_dir), name="tiny")
    engine._blas = Governor()
    engine.start().result(timeout=60)
    try:
        time.sleep(0.5)
        assert engine._blas.observed >= 5
    finally:
        engine.stop()


def test_a_stopped_engine_lets_go_of_its_model(tiny_llama_dir: Path) -> None:
    """Whoever still holds a stopped engine (a late reader, a handler finishing) must not
    keep the model's weights and KV caches alive."""
    import gc
    import weakref

    import mlx.core as mx

    before = mx.get_active_memory()
    engine = _engine(tiny_llama_dir, prefix_cache_bytes=1 << 20)
    asyncio.run(_run(engine, _prompts(engine)[0], SamplingParams(max_tokens=4, temperature=0)))
    wait_until(lambda: engine.prefix_cache.stats.entries > 0)  # stored after the last event
    model = weakref.ref(engine.model)
    engine.stop()
    gc.collect()
    assert model() is None, "the stopped engine still keeps its model alive"
    assert mx.get_active_memory() <= before + 64 * 1024
