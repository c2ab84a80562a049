"""Tests for the embedding micro-batcher (fake forward functions + the tiny MLX BERT)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from app.engine.embedding.batcher import EmbeddingBatcher
from app.models.sentence.embedding import load_embedding_model
from tests.unit.test_embedding_model import make_tiny_bert

POISON = 666


class FakeForward:
    """Records calls; vector = [len, sum]; raises on POISON; optional per-call delay/gate."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[list[list[int]]] = []
        self.threads: set[int] = set()
        self.delay_s = delay_s
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self, batch: list[list[int]]) -> list[list[float]]:
        self.calls.append([list(s) for s in batch])
        self.threads.add(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(5)
        if self.delay_s:
            time.sleep(self.delay_s)
        if any(POISON in seq for seq in batch):
            raise RuntimeError("poisoned batch")
        return [[float(len(s)), float(sum(s))] for s in batch]


def expected(seqs: Sequence[Sequence[int]]) -> list[list[float]]:
    return [[float(len(s)), float(sum(s))] for s in seqs]


@pytest.fixture
def fake() -> FakeForward:
    return FakeForward(delay_s=0.01)


@pytest.fixture
def batcher(fake: FakeForward) -> Iterator[EmbeddingBatcher]:
    b = EmbeddingBatcher(fake, max_batch_size=8, max_wait_ms=20)
    b.start()
    yield b
    b.stop()


def _requests(n: int) -> list[list[list[int]]]:
    return [[[i + 1] * (1 + (i * 7) % 5), [i + 100]] for i in range(n)]


def test_concurrent_requests_share_forward_passes(
    batcher: EmbeddingBatcher, fake: FakeForward
) -> None:
    reqs = _requests(12)  # 24 sequences, batch size 8 -> few passes

    async def main() -> list[list[list[float]]]:
        return await asyncio.gather(*(batcher.embed(r) for r in reqs))

    results = asyncio.run(main())
    assert results == [expected(r) for r in reqs]
    stats = batcher.stats_snapshot()
    assert stats["requests_served"] == 12 and stats["sequences_embedded"] == 24
    assert stats["forward_passes"] < 12
    assert stats["max_requests_in_pass"] > 1
    assert max(len(c) for c in fake.calls) <= 8
    assert len(fake.threads) == 1 and threading.get_ident() not in fake.threads
    for call in fake.calls:  # sorted by length inside each pass
        assert [len(s) for s in call] == sorted(len(s) for s in call)


def test_large_request_split_into_sub_batches(batcher: EmbeddingBatcher, fake: FakeForward) -> None:
    seqs = [[j] * (1 + j % 6) for j in range(1, 21)]
    assert asyncio.run(batcher.embed(seqs)) == expected(seqs)
    assert [len(c) for c in fake.calls] == [8, 8, 4]
    assert asyncio.run(batcher.embed([])) == []


def test_error_fails_only_the_offending_request(
    batcher: EmbeddingBatcher, fake: FakeForward
) -> None:
    reqs = _requests(6)
    reqs[2] = [[1, 2], [POISON]]

    async def main() -> list[object]:
        return await asyncio.gather(*(batcher.embed(r) for r in reqs), return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[2], RuntimeError) and "poisoned" in str(results[2])
    for i, res in enumerate(results):
        if i != 2:
            assert res == expected(reqs[i])
    stats = batcher.stats_snapshot()
    assert stats["requests_failed"] == 1 and stats["failed_forward_passes"] >= 1
    assert asyncio.run(batcher.embed([[5, 5]])) == [[2.0, 10.0]]  # worker still alive


def test_cancelled_request_does_not_break_worker(
    batcher: EmbeddingBatcher, fake: FakeForward
) -> None:
    fake.gate = threading.Event()

    async def main() -> list[list[float]]:
        task = asyncio.create_task(batcher.embed([[1, 2, 3]]))
        await asyncio.to_thread(fake.entered.wait, 5)  # forward pass is running
        queued = asyncio.create_task(batcher.embed([[4]]))  # queued behind it, then cancelled
        await asyncio.sleep(0.01)
        task.cancel()
        queued.cancel()
        fake.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(asyncio.CancelledError):
            await queued
        return await batcher.embed([[7, 8]])

    assert asyncio.run(main()) == [[2.0, 15.0]]
    assert batcher.running


def test_stop_timeout_then_restart(fake: FakeForward) -> None:
    fake.gate = threading.Event()
    b = EmbeddingBatcher(fake, max_wait_ms=0)
    b.start()

    async def main() -> list[list[float]]:
        task = asyncio.create_task(b.embed([[1, 1]]))
        await asyncio.to_thread(fake.entered.wait, 5)
        b.stop(timeout=0.01)  # worker is stuck in a forward pass
        assert not b.running
        fake.gate.set()
        return await task  # queued before the stop: still served

    assert asyncio.run(main()) == [[2.0, 2.0]]
    b.start()  # waits for the old worker, then starts a fresh one
    assert b.running
    assert asyncio.run(b.embed([[9]])) == [[1.0, 9.0]]
    b.stop()


def test_validation_errors_raised_before_queueing(fake: FakeForward) -> None:
    def validate(batch: list[list[int]]) -> None:
        if any(len(s) > 3 for s in batch):
            raise ValueError("too long")

    b = EmbeddingBatcher(fake, validate=validate)
    b.start()
    try:
        with pytest.raises(ValueError, match="too long"):
            asyncio.run(b.embed([[1, 2, 3, 4]]))
        assert fake.calls == []
    finally:
        b.stop()


def test_start_stop_lifecycle(fake: FakeForward) -> None:
    b = EmbeddingBatcher(fake, max_wait_ms=0)
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(b.embed([[1]]))
    b.start()
    b.start()  # idempotent
    assert asyncio.run(b.embed([[1]])) == [[1.0, 1.0]]
    b.stop()
    b.stop()
    assert not b.running
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(b.embed([[1]]))
    b.start()  # restartable
    assert asyncio.run(b.embed([[2]])) == [[1.0, 2.0]]
    b.stop()


def test_warmup_runs_on_worker_before_requests(fake: FakeForward) -> None:
    seen: list[int] = []
    b = EmbeddingBatcher(fake, warmup=lambda: seen.append(threading.get_ident()))
    b.start()
    try:
        assert asyncio.run(b.embed([[3]])) == [[1.0, 3.0]]
        assert b.ready.is_set()
        assert seen and seen[0] in fake.threads
    finally:
        b.stop()
    failing = EmbeddingBatcher(fake, warmup=lambda: 1 / 0)  # a failing warm-up is logged
    failing.start()
    try:
        assert asyncio.run(failing.embed([[4]])) == [[1.0, 4.0]]
    finally:
        failing.stop()


def test_lone_client_is_not_held_back_but_concurrent_clients_share_passes() -> None:
    fake = FakeForward(delay_s=0.02)
    b = EmbeddingBatcher(fake, max_batch_size=16, max_wait_ms=3000)
    b.start()
    try:
        async def one_by_one() -> float:
            started = time.perf_counter()
            for i in range(3):  # a lone client: nobody to wait for
                assert await b.embed([[i + 1]]) == [[1.0, float(i + 1)]]
            return time.perf_counter() - started

        assert asyncio.run(one_by_one()) < 2.0  # well under one 3 s gather window

        async def clients(n: int, rounds: int) -> None:
            async def client(i: int) -> None:
                for r in range(rounds):
                    assert await b.embed([[i, r]]) == [[2.0, float(i + r)]]

            await asyncio.gather(*(client(i) for i in range(n)))

        before = b.stats_snapshot()
        asyncio.run(clients(8, 4))
        after = b.stats_snapshot()
        passes = after["forward_passes"] - before["forward_passes"]
        assert after["sequences_embedded"] - before["sequences_embedded"] == 32
        assert passes <= 8  # once overlap is seen, the window gathers whole rounds
    finally:
        b.stop()


def test_batcher_with_tiny_mlx_model(tmp_path: Path) -> None:
    model = load_embedding_model(make_tiny_bert(tmp_path), parallel_streams=2)
    texts = [f"hello world {'the quick brown fox ' * (i % 4)} test {i}" for i in range(10)]
    ids = model.tokenize(texts)
    direct = model.embed_arrays(ids)  # main thread (compiles here; the worker recompiles)
    b = EmbeddingBatcher.for_model(model, max_batch_size=4, max_wait_ms=20)
    b.start()
    try:

        async def main() -> list[list[list[float]]]:
            return await asyncio.gather(*(b.embed([seq]) for seq in ids))

        assert b.ready.wait(30)  # model.warmup ran on the worker thread
        got = np.array([r[0] for r in asyncio.run(main())])
        np.testing.assert_allclose(got, direct, atol=1e-5)
        assert b.stats_snapshot()["forward_passes"] < len(texts)
        with pytest.raises(ValueError, match="maximum"):
            asyncio.run(b.embed([[2] + [10] * 60 + [3]]))
    finally:
        b.stop()
    for _ in range(2):  # new worker threads (thread ids get reused) need their own streams
        b.start()
        try:
            assert b.ready.wait(30)
            got = asyncio.run(b.embed(ids))
            np.testing.assert_allclose(np.array(got), direct, atol=1e-5)
            assert b.stats_snapshot()["requests_failed"] == 0
        finally:
            b.stop()
