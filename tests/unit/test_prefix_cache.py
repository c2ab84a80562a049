"""The prefix cache's RAM tier (salts, segmented LRU) and disk tier, on synthetic KV caches."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache

from app.engine.lm.prefix_cache import PrefixCache
from app.engine.lm.prefix_config import PrefixCacheConfig
from app.engine.lm.prefix_disk import BLOCK, DiskTier

LAYERS, HEADS, DIM = 2, 2, 8
PER_TOKEN = LAYERS * 2 * HEADS * DIM * 4  # float32 keys + values


def kv(tokens: list[int]) -> list[KVCache]:
    """A KV cache whose values encode the tokens (so a wrong prefix is visible)."""
    cache = []
    for layer in range(LAYERS):
        c = KVCache()
        base = mx.array(tokens, dtype=mx.float32).reshape(1, 1, -1, 1) + layer
        x = mx.broadcast_to(base, (1, HEADS, len(tokens), DIM))
        c.update_and_fetch(x, x)
        cache.append(c)
    mx.eval([c.state for c in cache])
    return cache


def encoded(cache: list[KVCache]) -> list[int]:
    return [int(v) for v in cache[0].keys[0, 0, : cache[0].offset, 0].tolist()]


def test_salts_are_separate_namespaces():
    cache = PrefixCache(max_bytes=1 << 20)
    prompt = list(range(1, 40))
    cache.store(prompt, kv(prompt), salt="tenant-a")
    assert cache.fetch(prompt + [99], salt="tenant-b") == (None, 0)
    hit, cached = cache.fetch(prompt + [99], salt="tenant-a")
    assert cached == len(prompt) and encoded(hit) == prompt


def test_exact_and_longer_matches_leave_a_token_to_feed():
    cache = PrefixCache(max_bytes=1 << 20)
    long = list(range(1, 50))
    cache.store(long, kv(long))
    hit, cached = cache.fetch(long)  # exact
    assert cached == len(long) - 1 and encoded(hit) == long[:-1]
    other = long[:20] + [500, 501]  # diverges: the longer entry, trimmed to the common part
    hit, cached = cache.fetch(other)
    assert cached == 20 and encoded(hit) == long[:20]
    assert cache.covered(other) == 20


def test_reused_entries_outlive_one_off_tails():
    """Segmented LRU: an entry a later request reused (the shared system prompt) stays while
    newer one-off entries are evicted, though it is the least recently stored."""
    n = 64
    cache = PrefixCache(max_bytes=4 * n * PER_TOKEN * 2)  # room for ~4 entries (KV step 256)
    system = list(range(1, n + 1))
    cache.store(system, kv(system))
    assert cache.fetch(system + [7, 8])[1] == n  # reused once: protected
    for i in range(12):  # one-off tails of other prompts, each stored once
        tail = [1000 + i * 100 + j for j in range(n)]
        cache.store(tail, kv(tail))
    assert cache.covered(system + [7]) == n
    assert cache.stats.evictions > 0


def test_eviction_spills_to_disk_and_a_miss_loads_it_back(tmp_path: Path):
    disk = DiskTier(tmp_path, "model-a", max_bytes=1 << 30, write_bytes_per_hour=1 << 30)
    cache = PrefixCache(max_bytes=1, disk=disk)  # every entry is evicted at once
    prompt = list(range(3, 3 + BLOCK + 40))
    cache.store(prompt, kv(prompt), salt="t")
    assert len(cache) == 0 and disk.entries == 1
    assert cache.fetch(prompt + [1], salt="other") == (None, 0)  # salted on disk too
    hit, cached = cache.fetch(prompt + [1], salt="t")
    assert cached == BLOCK and encoded(hit) == prompt[:BLOCK]
    assert cache.stats.tiers["disk"].hits == 1


def test_disk_tier_survives_a_restart(tmp_path: Path):
    prompt = list(range(5, 5 + 2 * BLOCK + 3))
    first = PrefixCache(max_bytes=1 << 24, disk=DiskTier(
        tmp_path, "m", max_bytes=1 << 30, write_bytes_per_hour=1 << 30))
    first.store(prompt, kv(prompt))
    first.close()  # shutdown: every entry to disk
    second = PrefixCache(max_bytes=1 << 24, disk=DiskTier(
        tmp_path, "m", max_bytes=1 << 30, write_bytes_per_hour=1 << 30))
    hit, cached = second.fetch(prompt + [9])
    assert cached == 2 * BLOCK and encoded(hit) == prompt[: 2 * BLOCK]
    # another model's digest never reads these files
    third = DiskTier(tmp_path, "other-model", max_bytes=1 << 30, write_bytes_per_hour=1 << 30)
    assert third.load(prompt + [9], "", 0) is None


def test_corrupt_and_foreign_files_are_deleted_not_fatal(tmp_path: Path):
    prompt = list(range(7, 7 + BLOCK + 1))
    disk = DiskTier(tmp_path, "m", max_bytes=1 << 30, write_bytes_per_hour=1 << 30)
    assert disk.save("", prompt, kv(prompt))
    (stored,) = tmp_path.glob("*.safetensors")
    stored.write_bytes(stored.read_bytes()[:100])  # truncated
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not ours")
    renamed = tmp_path / ("0" * 64 + ".safetensors")  # a valid name with the wrong content
    renamed.write_bytes(b"\x00" * 64)
    disk = DiskTier(tmp_path, "m", max_bytes=1 << 30, write_bytes_per_hour=1 << 30)
    assert not foreign.exists()
    assert disk.load(prompt + [1], "", 0) is None
    assert not stored.exists() and disk.stats.deleted_bad == 1
    # a file whose name is another entry's key: its metadata does not match, so it goes
    key = disk._keys(prompt, "", BLOCK)[-1][1]
    renamed.rename(tmp_path / f"{key}.safetensors")
    disk = DiskTier(tmp_path, "m", max_bytes=1 << 30, write_bytes_per_hour=1 << 30)
    assert disk.load(prompt + [1], "", 0) is None and disk.entries == 0


def test_write_budget_and_size_bound(tmp_path: Path):
    one = BLOCK * PER_TOKEN + 4 * BLOCK  # KV + token ids of one block
    disk = DiskTier(tmp_path, "m", max_bytes=1 << 30, write_bytes_per_hour=int(one * 1.5))
    a, b = list(range(1, BLOCK + 2)), list(range(2, BLOCK + 3))
    assert disk.save("", a, kv(a))
    assert not disk.save("", a, kv(a))  # same content: never written twice
    assert not disk.save("", b, kv(b)) and disk.stats.skipped_budget == 1  # budget spent
    bounded = DiskTier(tmp_path / "b", "m", max_bytes=int(one * 1.5),
                       write_bytes_per_hour=1 << 30)
    assert bounded.save("", a, kv(a)) and bounded.save("", b, kv(b))
    assert bounded.entries == 1 and bounded.nbytes <= one * 1.5  # the older file went


def test_short_entries_stay_in_ram_only(tmp_path: Path):
    disk = DiskTier(tmp_path, "m", max_bytes=1 << 30, write_bytes_per_hour=1 << 30)
    short = list(range(1, BLOCK - 1))
    assert not disk.save("", short, kv(short))


@pytest.mark.parametrize("explicit, expected", [(None, 100 * PER_TOKEN), (12345, 12345)])
def test_budget_from_the_models_kv_size(explicit: int | None, expected: int):
    config = PrefixCacheConfig(max_bytes=explicit, auto_tokens=100, auto_cap_bytes=1 << 40)
    assert config.budget_bytes(PER_TOKEN) == expected
    capped = PrefixCacheConfig(auto_tokens=100, auto_cap_bytes=1000)
    assert capped.budget_bytes(PER_TOKEN) == 1000


def test_float16_entries_take_half_the_bytes_and_come_back_as_float32(tmp_path: Path):
    prompt = list(range(1, BLOCK + 30))
    plain = PrefixCache(max_bytes=1 << 24)
    small = PrefixCache(max_bytes=1 << 24, native_dtype=mx.float32, compact_kv=True,
                        disk=DiskTier(tmp_path, "m", max_bytes=1 << 30,
                                      write_bytes_per_hour=1 << 30))
    plain.store(prompt, kv(prompt))
    small.store(prompt, kv(prompt))
    assert small.nbytes * 2 <= plain.nbytes
    hit, cached = small.fetch(prompt + [5])
    assert hit[0].keys.dtype == mx.float32 and encoded(hit) == prompt
    small.close()  # float16 on disk too; served as float32 after a restart
    again = PrefixCache(max_bytes=1 << 24, native_dtype=mx.float32, compact_kv=True,
                        disk=DiskTier(tmp_path, "m", max_bytes=1 << 30,
                                      write_bytes_per_hour=1 << 30))
    hit, cached = again.fetch(prompt + [5])
    assert cached == BLOCK and hit[0].keys.dtype == mx.float32
    assert encoded(hit) == prompt[:BLOCK]
