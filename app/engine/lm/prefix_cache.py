"""Reuse the KV cache of a shared prompt prefix across requests (bounded by bytes, LRU).

A thin layer over mlx-lm's ``LRUPromptCache`` (a token trie of KV caches): it adds hit and
miss counters, and makes sure the engine always has at least one prompt token left to feed,
since a sequence cannot start from an empty prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

_KEY = "model"  # one cache per engine, so one model key


@dataclass
class PrefixCacheStats:
    queries: int = 0
    hits: int = 0
    cached_tokens: int = 0  # prompt tokens served from the cache, summed
    prompt_tokens: int = 0  # prompt tokens looked up, summed
    bytes: int = 0
    entries: int = 0


class PrefixCache:
    def __init__(self, max_bytes: int, max_entries: int = 256) -> None:
        self._cache = LRUPromptCache(max_size=max_entries, max_bytes=max_bytes)
        self.max_bytes = max_bytes
        self.stats = PrefixCacheStats()

    def fetch(self, prompt: list[int]) -> tuple[list[Any] | None, int]:
        """Return (a private copy of the best cache or None, number of prompt tokens it covers)."""
        self.stats.queries += 1
        self.stats.prompt_tokens += len(prompt)
        cache, rest = self._cache.fetch_nearest_cache(_KEY, prompt)
        if cache is None:
            return None, 0
        cached = len(prompt) - len(rest)
        if cached >= len(prompt):  # exact match: give the last token back to the engine
            if not can_trim_prompt_cache(cache):
                return None, 0
            trim_prompt_cache(cache, cached - len(prompt) + 1)
            cached = len(prompt) - 1
        if cached <= 0:
            return None, 0
        self.stats.hits += 1
        self.stats.cached_tokens += cached
        return cache, cached

    def store(self, tokens: list[int], cache: list[Any]) -> None:
        """Keep the KV cache of ``tokens`` (prompt + generated) for later requests."""
        if not tokens or not cache:
            return
        # A finished sequence's cache comes from ``BatchKVCache.extract``: lazy slices of the
        # whole batch's KV buffers. Kept unevaluated, each entry would pin those buffers as they
        # were at its step (every sequence, every layer: ~380 MB per 256 positions at batch 32
        # on SmolLM2-135M) while counting only its own slice. Evaluating it here, on the
        # engine's thread, gives it buffers of its own size and lets the batch buffers go.
        mx.eval([c.state for c in cache])
        self._cache.insert_cache(_KEY, list(tokens), cache)
        self.stats.bytes = self._cache.nbytes
        self.stats.entries = len(self._cache)

    def clear(self) -> None:
        self._cache.trim_to(n_sequences=0)
        self.stats.bytes = 0
        self.stats.entries = 0
