"""Memory under batching: the engine gives memory back, the prefix cache holds what it counts."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.cache import BatchKVCache

from app.engine import memory
from app.engine.lm.prefix_cache import PrefixCache
from app.engine.lm.types import Failed, Finished, GenerationRequest, SamplingParams
from app.engine.lm.worker import ModelEngine

MiB = 2**20


def _engine(model_dir: Path, **kwargs) -> ModelEngine:
    from app.models.mlx_dir import load_mlx_dir

    engine = ModelEngine(lambda: load_mlx_dir(model_dir), name="tiny", **kwargs)
    engine.start().result(timeout=60)
    return engine


def _burst(engine: ModelEngine, n: int, concurrency: int, seed: int = 0) -> list:
    """n requests of random prompts, `concurrency` at a time; their final events."""
    rng = random.Random(seed)

    async def one() -> object:
        prompt = [rng.randrange(3, 300) for _ in range(rng.randint(5, 40))]
        params = SamplingParams(max_tokens=rng.randint(4, 12), temperature=0.7)
        request = GenerationRequest(prompt, params, asyncio.get_running_loop())
        engine.submit(request)
        while True:
            event = await asyncio.wait_for(request.events.get(), 60)
            if isinstance(event, Finished | Failed):
                return event

    async def main() -> list:
        todo, done = list(range(n)), []

        async def client() -> None:
            while todo:
                todo.pop()
                done.append(await one())

        await asyncio.gather(*(client() for _ in range(concurrency)))
        return done

    return asyncio.run(main())


def _wait_idle(engine: ModelEngine, releases_before: int) -> None:
    deadline = time.monotonic() + 10
    while engine.stats.running or memory.stats.releases == releases_before:
        assert time.monotonic() < deadline, "engine did not go idle"
        time.sleep(0.01)
    time.sleep(0.05)  # let the release finish on the engine thread


def test_release_memory_empties_mlx_buffer_pool():
    x = mx.ones((1024, 1024))
    mx.eval(x)
    del x
    assert mx.get_cache_memory() >= 4 * MiB  # the freed buffer waits in MLX's pool
    before = memory.stats.releases
    memory.release_memory()
    assert mx.get_cache_memory() == 0
    assert memory.stats.releases == before + 1


def test_trim_only_on_glibc(monkeypatch: pytest.MonkeyPatch):
    import os
    import sys

    glibc = sys.platform.startswith("linux") and (os.confstr("CS_GNU_LIBC_VERSION") or "")
    assert memory.can_trim() == bool(glibc and glibc.startswith("glibc"))
    assert memory._find_malloc_trim("darwin") is None  # macOS & co: never called
    monkeypatch.setattr(memory.os, "confstr", lambda name: None)  # a libc that is not glibc
    assert memory._find_malloc_trim("linux") is None
    monkeypatch.setattr(memory, "_malloc_trim", None)
    trims = memory.stats.trims
    memory.release_memory()  # harmless without malloc_trim
    assert memory.stats.trims == trims


def test_engine_frees_memory_when_it_goes_idle(tiny_llama_dir: Path):
    engine = _engine(tiny_llama_dir, max_batch_size=16)
    try:
        releases, trims = memory.stats.releases, memory.stats.trims
        done = _burst(engine, 48, 16)
        assert all(isinstance(e, Finished) for e in done)
        _wait_idle(engine, releases)
        assert engine.stats.max_running > 1  # it really batched
        assert mx.get_cache_memory() == 0  # MLX's pool of freed buffers is emptied
        if memory.can_trim():
            assert memory.stats.trims > trims  # and glibc's free heap pages handed back
    finally:
        engine.stop()


def test_stored_batch_cache_does_not_pin_the_batch_buffers():
    """Minimal reproducer of the prefix-cache leak: an entry extracted from a running batch
    must hold memory of its own size, not the batch's KV buffers."""
    gc.collect()
    mx.clear_cache()
    base = mx.get_active_memory()
    cache = PrefixCache(max_bytes=64 * MiB)
    batch = [BatchKVCache(left_padding=[0] * 8) for _ in range(4)]  # 8 sequences, 4 layers
    for c in batch:
        kv = mx.random.normal((8, 2, 200, 64))
        c.update_and_fetch(kv, kv)
    mx.eval([(c.keys, c.values) for c in batch])
    for step in range(8):  # each step: one sequence finishes and is stored, the batch goes on
        cache.store(list(range(step, step + 200)), [c.extract(step) for c in batch])
        for c in batch:
            one = mx.random.normal((8, 2, 1, 64))
            c.update_and_fetch(one, one)
        mx.eval([(c.keys, c.values) for c in batch])
    del batch, c, kv, one
    gc.collect()
    mx.clear_cache()
    held = mx.get_active_memory() - base
    assert cache.stats.entries == 8
    # the entries' own arrays; before the fix ~8 batch snapshots (8 MiB each) stayed alive
    assert held <= cache.stats.bytes + MiB, (held / MiB, cache.stats.bytes / MiB)
    cache.clear()
    gc.collect()
    mx.clear_cache()
    assert mx.get_active_memory() - base <= MiB


def test_prefix_cache_memory_stays_what_it_accounts_under_batching(tiny_llama_dir: Path):
    engine = _engine(tiny_llama_dir, max_batch_size=16, prefix_cache_bytes=64 * MiB)
    try:
        releases = memory.stats.releases
        gc.collect()
        base = mx.get_active_memory()
        done = _burst(engine, 96, 16, seed=1)
        assert all(isinstance(e, Finished) for e in done)
        _wait_idle(engine, releases)
        stats = engine.prefix_cache.stats
        assert stats.entries > 0 and engine.stats.max_running > 1
        held = mx.get_active_memory() - base
        # before the fix: ~60 MiB held here for ~2 MiB of entries
        assert held <= stats.bytes + 2 * MiB, (held / MiB, stats.bytes / MiB)
    finally:
        engine.stop()
