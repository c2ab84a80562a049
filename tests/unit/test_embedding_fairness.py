"""Embedding requests under load (issue 23 item 6): bounded, cancellable, interleaved."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.engine.base import QueueFullError
from app.engine.embedding.batcher import EmbeddingBatcher
from tests.unit.test_embedding_batcher import FakeForward, expected

BIG = [[i + 1] * 4 for i in range(64)]  # 8 passes of 8


def test_small_request_joins_the_next_pass_of_a_big_one() -> None:
    fake = FakeForward(delay_s=0.02)
    batcher = EmbeddingBatcher(fake, max_batch_size=8, max_wait_ms=0)
    batcher.start()

    async def main() -> tuple[list, list]:
        big = asyncio.create_task(batcher.embed(BIG))
        await asyncio.to_thread(fake.entered.wait, 5)  # the big request's first pass runs
        small = await batcher.embed([[999]])
        return small, await big

    try:
        small, big = asyncio.run(main())
    finally:
        batcher.stop()
    assert small == expected([[999]]) and big == expected(BIG)
    small_pass = next(i for i, call in enumerate(fake.calls) if [999] in call)
    assert small_pass <= 2  # not after the big request's eight passes
    assert len(fake.calls) <= 9


def test_cancelled_big_request_stops_at_its_next_pass() -> None:
    fake = FakeForward(delay_s=0.0)
    fake.gate = threading.Event()
    batcher = EmbeddingBatcher(fake, max_batch_size=8, max_wait_ms=0)
    batcher.start()

    async def main() -> None:
        big = asyncio.create_task(batcher.embed(BIG))
        await asyncio.to_thread(fake.entered.wait, 5)
        big.cancel()  # the client left during the first pass
        await asyncio.sleep(0.05)
        fake.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await big
        assert await batcher.embed([[5]]) == expected([[5]])

    try:
        asyncio.run(main())
    finally:
        batcher.stop()
    assert len(fake.calls) == 2  # the big request's first pass, then the small one
    assert batcher.stats_snapshot()["requests_cancelled"] == 1


def test_queue_is_bounded() -> None:
    fake = FakeForward()
    fake.gate = threading.Event()
    batcher = EmbeddingBatcher(fake, max_batch_size=1, max_wait_ms=0, queue_depth=2)
    batcher.start()

    async def main() -> list:
        first = asyncio.create_task(batcher.embed([[1]]))
        await asyncio.to_thread(fake.entered.wait, 5)
        second = asyncio.create_task(batcher.embed([[2]]))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.embed([[3]])
        fake.gate.set()
        results = await asyncio.gather(first, second)
        results.append(await batcher.embed([[4]]))  # room again once they are answered
        return results

    try:
        assert asyncio.run(main()) == [expected([[1]]), expected([[2]]), expected([[4]])]
    finally:
        batcher.stop()
