"""Embedding requests under load (issue 23 item 6): bounded, cancellable, interleaved."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from app.engine.base import QueueFullError
from app.engine.embedding.batcher import EmbeddingBatcher
from app.models.sentence.embedding import load_embedding_model
from tests.unit.test_embedding_batcher import FakeForward, expected
from tests.unit.test_embedding_model import make_tiny_bert

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


class TokenTimedForward(FakeForward):
    """A fake whose pass takes time in proportion to its padded tokens, like the model."""

    def __init__(self, seconds_per_token: float) -> None:
        super().__init__()
        self.seconds_per_token = seconds_per_token

    def __call__(self, batch: list[list[int]]) -> list[list[float]]:
        time.sleep(len(batch) * max(map(len, batch)) * self.seconds_per_token)
        return super().__call__(batch)


async def _small_behind_big(batcher: EmbeddingBatcher, entered: threading.Event,
                            big_ids: list[list[int]], small_ids: list[list[int]]
                            ) -> tuple[list, list, float, float]:
    """Send ``big_ids``, then ``small_ids`` once the big request's first pass runs; both
    results and both requests' times to their answer (seconds from the big one's start)."""
    started = time.perf_counter()
    big = asyncio.create_task(batcher.embed(big_ids))
    big.add_done_callback(lambda _: done.setdefault("big", time.perf_counter() - started))
    done: dict[str, float] = {}
    await asyncio.to_thread(entered.wait, 10)
    small = await batcher.embed(small_ids)
    done["small"] = time.perf_counter() - started
    return small, await big, done["small"], done["big"]


def test_small_request_overtakes_a_big_one_sliced_by_tokens() -> None:
    fake = TokenTimedForward(seconds_per_token=0.0002)  # a 200-token slice: 40 ms
    big_ids = [[i + 1] * 50 for i in range(64)]  # 16 slices of 4 rows
    batcher = EmbeddingBatcher(fake, max_batch_size=32, max_pass_tokens=200, max_wait_ms=0)
    batcher.start()
    try:
        small, big, small_s, big_s = asyncio.run(
            _small_behind_big(batcher, fake.entered, big_ids, [[999]]))
    finally:
        batcher.stop()
    assert small == expected([[999]]) and big == expected(big_ids)
    assert small_s < big_s / 3, (small_s, big_s)  # not behind the whole big request
    assert [[999]] in fake.calls[:3]  # alone, right after the slice that was running
    assert all(len(call) * max(map(len, call)) <= 200 for call in fake.calls)


def test_tiny_model_small_request_first_and_big_vectors_as_alone(tmp_path: Path) -> None:
    model = load_embedding_model(make_tiny_bert(tmp_path), parallel_streams=2)
    big_ids = model.tokenize([f"document {i} " + "the quick brown fox " * (2 + i % 8)
                              for i in range(48)])
    small_ids = model.tokenize(["hi"])
    entered = threading.Event()

    def forward(batch: list[list[int]]) -> list[list[float]]:
        entered.set()
        return model.embed_token_ids(batch)

    batcher = EmbeddingBatcher(forward, max_batch_size=32, max_pass_tokens=96, max_wait_ms=0,
                               warmup=model.warmup)
    batcher.start()
    try:
        assert batcher.ready.wait(60)
        alone = asyncio.run(batcher.embed(big_ids))
        entered.clear()
        small, big, small_s, big_s = asyncio.run(
            _small_behind_big(batcher, entered, big_ids, small_ids))
    finally:
        batcher.stop()
    assert small_s < big_s, (small_s, big_s)  # the one-word request did not wait it out
    assert big == alone  # the same vectors, in the same order, as when it ran alone
    np.testing.assert_allclose(small, model.embed_arrays(small_ids), atol=1e-5)
    np.testing.assert_allclose(big, model.embed_arrays(big_ids), atol=1e-5)  # one pass
