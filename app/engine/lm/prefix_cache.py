"""Reuse the KV cache of a shared prompt prefix across requests (bounded by bytes).

Entries live in mlx-lm's token trie (``PromptTrie``), one namespace per cache *salt* (the
tenant: API key / house id / the request's ``cache_salt``), so one tenant's prompts never
match another's. Eviction is a segmented LRU by bytes: an entry starts *probationary* and
becomes *protected* once a later request reused it (a system prompt + tools that many
sessions share); probationary entries (one-off tails) are evicted first, and the protected
segment may hold at most ``PROTECTED_SHARE`` of the budget. Evicted entries, and all of them
at :meth:`close`, go to the optional disk tier (:mod:`app.engine.lm.prefix_disk`); a lookup
that the disk tier covers further than RAM loads the entry back.

The engine always has at least one prompt token left to feed: a sequence cannot start from
an empty prompt.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import (
    PromptTrie,
    can_trim_prompt_cache,
    make_prompt_cache,
    trim_prompt_cache,
)

from app.engine.lm.kv_storage import compact, served
from app.engine.lm.prefix_config import PrefixCacheConfig
from app.engine.lm.prefix_disk import DiskTier

log = logging.getLogger(__name__)

PROTECTED_SHARE = 0.75  # of the budget, at most, for entries that were reused


@dataclass
class TierStats:
    hits: int = 0  # lookups this tier served
    cached_tokens: int = 0  # prompt tokens it served, summed
    bytes: int = 0
    entries: int = 0


@dataclass
class PrefixCacheStats:
    queries: int = 0
    hits: int = 0  # lookups served by any tier
    cached_tokens: int = 0  # prompt tokens served from the cache, summed
    prompt_tokens: int = 0  # prompt tokens looked up, summed
    bytes: int = 0  # RAM tier
    entries: int = 0  # RAM tier
    max_bytes: int = 0
    evictions: int = 0
    tiers: dict[str, TierStats] = field(
        default_factory=lambda: {"ram": TierStats(), "disk": TierStats()}
    )


@dataclass
class _Entry:
    salt: str
    tokens: list[int]
    cache: list[Any]
    nbytes: int
    reused: int = 0


def _nbytes(cache: list[Any]) -> int:
    return sum(c.nbytes for c in cache)


def kv_length(cache: list[Any], default: int) -> int:
    """Positions the KV cache holds (a finished sequence's last token may not be in it)."""
    offset = getattr(cache[0], "offset", None) if cache else None
    return int(offset) if isinstance(offset, int) else default


class PrefixCache:
    """Salted, byte-bounded prefix cache of KV caches; see the module docstring."""

    def __init__(
        self, max_bytes: int, max_entries: int = 256, disk: Any = None,
        native_dtype: Any = None, compact_kv: bool = False,
    ) -> None:
        """``compact_kv``: keep float32 KV as float16 (:mod:`app.engine.lm.kv_storage`);
        ``native_dtype``: the model's KV dtype, what a served copy is converted back to."""
        self.native_dtype = native_dtype
        self.compact_kv = compact_kv
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.disk = disk  # a DiskTier or None
        self._trie = PromptTrie()
        self._probation: OrderedDict[tuple, _Entry] = OrderedDict()
        self._protected: OrderedDict[tuple, _Entry] = OrderedDict()
        self._bytes = 0
        self._protected_bytes = 0
        self.stats = PrefixCacheStats(max_bytes=max_bytes)

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    @property
    def nbytes(self) -> int:
        return self._bytes

    # ---- lookup --------------------------------------------------------------
    def fetch(self, prompt: list[int], salt: str = "") -> tuple[list[Any] | None, int]:
        """Return (a private copy of the best cache or None, number of prompt tokens it covers)."""
        self.stats.queries += 1
        self.stats.prompt_tokens += len(prompt)
        cache, cached, entry = self._nearest(prompt, salt)
        tier = "ram"
        if self.disk is not None and self.disk.may_cover(prompt, salt, cached):
            loaded = self.disk.load(prompt, salt, cached)
            if loaded is not None:
                cache, tokens = loaded  # a block prefix, shorter than the prompt
                self._insert(salt, tokens, self._kept(cache), reused=1)
                cache = self._served(cache)
                cached, entry, tier = len(tokens), None, "disk"
        if cache is None or cached <= 0:
            return None, 0
        if entry is not None:
            self._mark_reused(entry)
        self.stats.hits += 1
        self.stats.cached_tokens += cached
        self.stats.tiers[tier].hits += 1
        self.stats.tiers[tier].cached_tokens += cached
        return cache, cached

    def covered(self, prompt: list[int], salt: str = "") -> int:
        """Prompt tokens the RAM tier would serve now (no copy, no counters)."""
        result = self._trie.search(salt, prompt)
        if result.exact is not None:
            entry, keep = self._trie.get(salt, result.exact), len(prompt) - 1
        elif result.longer is not None and result.common_prefix > len(result.shorter or ()):
            entry = self._trie.get(salt, result.longer)
            keep = min(len(prompt) - 1, result.common_prefix)
            if not can_trim_prompt_cache(entry.cache):
                return len(result.shorter or ())
        elif result.shorter:
            entry, keep = self._trie.get(salt, result.shorter), len(result.shorter)
        else:
            return 0
        return max(0, min(keep, kv_length(entry.cache, len(entry.tokens))))

    def _nearest(self, prompt: list[int], salt: str) -> tuple[list[Any] | None, int, Any]:
        """The best entry for ``prompt``, copied and trimmed to leave a token to feed."""
        result = self._trie.search(salt, prompt)
        if result.exact is not None:
            entry = self._trie.get(salt, result.exact)
            return self._trimmed(entry, len(prompt) - 1)
        shorter = len(result.shorter) if result.shorter is not None else 0
        if result.longer is not None and result.common_prefix > shorter:
            entry = self._trie.get(salt, result.longer)
            if can_trim_prompt_cache(entry.cache):
                return self._trimmed(entry, min(len(prompt) - 1, result.common_prefix))
        if shorter > 0:
            entry = self._trie.get(salt, result.shorter)
            if can_trim_prompt_cache(entry.cache):
                return self._trimmed(entry, shorter)
            return self._served(entry.cache), shorter, entry
        return None, 0, None

    def _trimmed(self, entry: _Entry, keep: int) -> tuple[list[Any] | None, int, Any]:
        held = kv_length(entry.cache, len(entry.tokens))
        keep = min(keep, held)
        if keep <= 0 or not can_trim_prompt_cache(entry.cache):
            return None, 0, None
        cache = self._served(entry.cache)
        trim_prompt_cache(cache, held - keep)
        return cache, keep, entry

    # ---- store ---------------------------------------------------------------
    def store(self, tokens: list[int], cache: list[Any], salt: str = "") -> None:
        """Keep the KV cache of ``tokens`` (a prompt prefix, or prompt + generated)."""
        if not tokens or not cache:
            return
        # A sequence's cache comes from ``extract``: lazy slices of the whole batch's KV
        # buffers. Kept unevaluated, each entry would pin those buffers as they were at its
        # step (every sequence, every layer: ~380 MB per 256 positions at batch 32 on
        # SmolLM2-135M) while counting only its own slice. Evaluating it here, on the
        # engine's thread, gives it buffers of its own size and lets the batch buffers go.
        mx.eval([c.state for c in cache])
        self._insert(salt, list(tokens), self._kept(cache))

    def _kept(self, cache: list[Any]) -> list[Any]:
        return compact(cache) if self.compact_kv else cache

    def _served(self, cache: list[Any]) -> list[Any]:
        if self.native_dtype is None:
            return copy.deepcopy(cache)
        return served(cache, self.native_dtype)

    def _insert(self, salt: str, tokens: list[int], cache: list[Any], reused: int = 0) -> None:
        entry = _Entry(salt, tokens, cache, _nbytes(cache), reused)
        key = (salt, tuple(tokens))
        previous = self._trie.add(salt, tokens, entry)
        if previous is not None:
            entry.reused = max(entry.reused, previous.reused)
            self._unlink(key, previous)
        if can_trim_prompt_cache(cache):  # a longer entry serves every prefix of it
            for length, prefix in self._trie.pop_prefixes(salt, tokens):
                entry.reused = max(entry.reused, prefix.reused)
                self._unlink((salt, tuple(tokens[:length])), prefix)
        self._link(key, entry)
        self._enforce()

    def _link(self, key: tuple, entry: _Entry) -> None:
        segment = self._protected if entry.reused else self._probation
        segment[key] = entry
        self._bytes += entry.nbytes
        if entry.reused:
            self._protected_bytes += entry.nbytes
        self._update_stats()

    def _unlink(self, key: tuple, entry: _Entry) -> None:
        for segment in (self._probation, self._protected):
            if segment.get(key) is entry:
                del segment[key]
                self._bytes -= entry.nbytes
                if segment is self._protected:
                    self._protected_bytes -= entry.nbytes
                break
        self._update_stats()

    def _mark_reused(self, entry: _Entry) -> None:
        key = (entry.salt, tuple(entry.tokens))
        self._unlink(key, entry)
        entry.reused += 1
        self._link(key, entry)  # most recently used end of the protected segment
        self._enforce()

    def _enforce(self) -> None:
        """Demote the protected segment's oldest past its share; evict past the budget."""
        while self._protected and self._protected_bytes > self.max_bytes * PROTECTED_SHARE:
            key, entry = next(iter(self._protected.items()))
            self._unlink(key, entry)
            entry.reused = 0
            self._link(key, entry)
            self._probation.move_to_end(key, last=False)  # oldest of the probationers
        while len(self) > self.max_entries or self._bytes > self.max_bytes:
            segment = self._probation or self._protected
            key, entry = next(iter(segment.items()))
            self._evict(key, entry)

    def _evict(self, key: tuple, entry: _Entry) -> None:
        self._trie.pop(entry.salt, entry.tokens)
        self._unlink(key, entry)
        self.stats.evictions += 1
        if self.disk is not None:
            self.disk.save(entry.salt, entry.tokens, entry.cache)

    def _update_stats(self) -> None:
        self.stats.bytes = self.stats.tiers["ram"].bytes = self._bytes
        self.stats.entries = self.stats.tiers["ram"].entries = len(self)
        if self.disk is not None:
            self.stats.tiers["disk"].bytes = self.disk.nbytes
            self.stats.tiers["disk"].entries = self.disk.entries

    # ---- end -----------------------------------------------------------------
    def clear(self) -> None:
        """Forget every RAM entry (the disk tier keeps its files)."""
        self._trie = PromptTrie()
        self._probation.clear()
        self._protected.clear()
        self._bytes = self._protected_bytes = 0
        self._update_stats()

    def close(self) -> None:
        """Engine stopping: every RAM entry goes to the disk tier (if any), then RAM is freed.
        Reused entries first, so a tight write budget keeps the ones worth keeping."""
        if self.disk is not None:
            for segment in (self._protected, self._probation):
                for entry in reversed(segment.values()):
                    self.disk.save(entry.salt, entry.tokens, entry.cache)
        self.clear()


def kv_profile(model: Any) -> tuple[int, Any]:
    """(bytes of KV one token takes in ``model``, its KV dtype), from one token's pass."""
    cache = make_prompt_cache(model)
    model(mx.array([[0]]), cache=cache)
    total, dtype = 0.0, None
    for layer in cache:
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.ndim >= 3 and keys.shape[2] > 0:
            mx.eval(layer.state)
            total += layer.nbytes / keys.shape[2]
            dtype = dtype or keys.dtype
    return max(1, int(total)), dtype


def build_prefix_cache(config: PrefixCacheConfig, model: Any, name: str) -> PrefixCache | None:
    """The engine's prefix cache for ``model``, or None when the budget is 0."""
    per_token, native = kv_profile(model)
    budget = config.budget_bytes(per_token)
    compact_kv = config.kv_store == "float16" and native == mx.float32
    if budget <= 0:
        return None
    disk = None
    if config.disk_dir is not None and config.disk_max_bytes > 0:
        disk = DiskTier(
            config.disk_dir,
            config.model_digest,
            max_bytes=config.disk_max_bytes,
            write_bytes_per_hour=config.disk_write_bytes_per_hour,
        )
    log.info(
        "engine %s: prefix cache %.0f MiB in RAM%s%s", name, budget / 2**20,
        f" (~{budget // (per_token // (2 if compact_kv else 1))} tokens, KV kept as "
        f"{'float16' if compact_kv else native})",
        f", disk tier {config.disk_dir} ({disk.entries} entries)" if disk else "",
    )
    return PrefixCache(budget, config.max_entries, disk=disk, native_dtype=native,
                       compact_kv=compact_kv)
