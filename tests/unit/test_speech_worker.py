"""The speech worker: jobs in order on one thread, partial results, a bounded queue,
cancellation when the caller leaves, refusal once stopped."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.engine.base import EngineStoppedError, QueueFullError
from app.engine.speech.worker import JobOutcome, SpeechWorker, Stepped


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


class CountingBatch:
    """A stand-in StepBatch: a member counts down ``n`` steps, emitting each, and ends with
    the list of batch sizes it saw; ``n < 0`` fails at once."""

    def __init__(self, log):
        self.members, self.log = {}, log

    def __len__(self):
        return len(self.members)

    def add(self, job):
        emit, n = job
        member = object()
        self.members[member] = [emit, n, []]
        return member

    def drop(self, member):
        del self.members[member]

    def step(self):
        time.sleep(0.005)  # a model step takes a while: callers can come and go meanwhile
        self.log.append(len(self.members))
        ended = []
        for member, state in list(self.members.items()):
            emit, n, seen = state
            seen.append(len(self.members))
            try:
                if n < 0:
                    raise ValueError("bad member")
                emit(n)
            except Exception as exc:
                ended.append((member, None, exc))
                del self.members[member]
                continue
            state[1] = n - 1
            if n == 0:
                ended.append((member, seen, None))
                del self.members[member]
        return ended


def stepped(group, log, n, gate=None):
    def start(emit):
        if gate is not None:
            gate.wait(10)
        return emit, n

    return Stepped(group=group, open_batch=lambda: CountingBatch(log), start=start)


def test_stepped_jobs_share_steps_and_join_while_it_runs():
    w = SpeechWorker(name="batch", queue_depth=8, max_batch=3)
    w.start()
    log, gate = [], threading.Event()
    group = object()

    async def main():
        first = asyncio.ensure_future(w.run(stepped(group, log, 5, gate)))
        await asyncio.sleep(0.1)  # the worker holds the first job (its start waits)
        rest = [asyncio.ensure_future(w.run(stepped(group, log, 2))) for _ in range(3)]
        plain = asyncio.ensure_future(w.run(lambda emit: "alone"))
        await asyncio.sleep(0.05)
        gate.set()
        return [(await f).value for f in [first, *rest, plain]]

    try:
        values = asyncio.run(main())
    finally:
        w.stop()
    assert values[0][:3] == [1, 3, 3] and max(log) == 3  # two joined, max_batch held
    assert values[4] == "alone"  # the plain job waited for the batch to end
    assert all(len(v) == 3 for v in values[1:4])
    stats = w.stats_snapshot()
    assert stats["jobs_served"] == 5 and stats["batches"] >= 1
    assert stats["batched_job_steps"] > stats["batch_steps"] and stats["waiting"] == 0


def test_a_failing_or_departed_member_leaves_the_others_running(worker):
    log, group = [], object()

    async def main():
        bad = asyncio.ensure_future(worker.run(stepped(group, log, -1)))
        stream = worker.stream(stepped(group, log, 50))
        good = asyncio.ensure_future(worker.run(stepped(group, log, 3)))
        with pytest.raises(ValueError, match="bad member"):
            await bad
        assert await anext(stream) == 50
        await stream.aclose()  # this caller leaves: its member is dropped
        return (await good).value

    assert len(asyncio.run(main())) == 4
    stats = worker.stats_snapshot()
    assert stats["jobs_failed"] == 1 and stats["jobs_cancelled"] == 1
    assert stats["jobs_served"] == 1 and max(log) <= 2
