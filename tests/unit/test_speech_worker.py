"""The speech worker: jobs in order on one thread, partial results, a bounded queue,
cancellation when the caller leaves, refusal once stopped."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.engine.base import EngineStoppedError, QueueFullError
from app.engine.speech.worker import JobOutcome, SpeechWorker


@pytest.fixture
def worker():
    w = SpeechWorker(name="test", queue_depth=2)
    w.start()
    w.ready.wait(5)
    yield w
    w.stop()


def test_partial_results_then_the_outcome(worker):
    threads = set()

    def job(emit):
        threads.add(threading.current_thread().name)
        for i in range(3):
            emit(i)
        return "done"

    async def main():
        return [item async for item in worker.stream(job)]

    items = asyncio.run(main())
    assert items[:3] == [0, 1, 2] and isinstance(items[3], JobOutcome)
    assert items[3].value == "done" and items[3].compute_seconds >= 0
    assert threads == {"test-speech"} and worker.stats_snapshot()["jobs_served"] == 1


def test_errors_reach_the_caller_and_the_worker_lives(worker):
    def bad(emit):
        raise RuntimeError("boom")

    async def main():
        with pytest.raises(RuntimeError, match="boom"):
            await worker.run(bad)
        return (await worker.run(lambda emit: 7)).value

    assert asyncio.run(main()) == 7
    assert worker.stats_snapshot()["jobs_failed"] == 1


def test_queue_is_bounded(worker):
    gate = threading.Event()

    async def main():
        running = asyncio.ensure_future(worker.run(lambda emit: gate.wait(10)))
        await asyncio.sleep(0.1)  # the worker took it: it no longer waits
        queued = [asyncio.ensure_future(worker.run(lambda emit: 1)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError):
            await worker.run(lambda emit: 1)
        gate.set()
        values = [(await f).value for f in [running, *queued]]
        assert worker.stats_snapshot()["waiting"] == 0  # started jobs no longer count
        values.append((await worker.run(lambda emit: 2)).value)  # room again
        return values

    assert asyncio.run(main()) == [True, 1, 1, 2]


def test_a_caller_that_leaves_cancels_its_job(worker):
    emitted = []
    release = threading.Event()

    def long_job(emit):
        for i in range(100):
            emit(i)
            emitted.append(i)
            release.wait(0.01)
        return "finished"

    async def main():
        stream = worker.stream(long_job)
        assert await anext(stream) == 0
        await stream.aclose()
        await asyncio.sleep(0.3)

    asyncio.run(main())
    assert len(emitted) < 100
    assert worker.stats_snapshot()["jobs_cancelled"] == 1


def test_stopped_worker_refuses():
    w = SpeechWorker(name="gone")
    w.start()
    w.stop()

    async def main():
        await w.run(lambda emit: 1)

    with pytest.raises(EngineStoppedError):
        asyncio.run(main())
