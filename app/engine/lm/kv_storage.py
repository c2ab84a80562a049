"""Cached KV entries in a smaller dtype than the model computes in (float32 on CPU).

Measured (``scripts/bench_kv_precision.py``, docs/BENCHMARKS.md): float16 halves an entry's
bytes, so the same budget keeps twice the prompts, and restores in ~20 ms what costs seconds
to prefill; greedy output was unchanged on SmolLM2's test prompts but not on the tiny random
test model (near-tied logits), so it is opt-in (``prefix_cache_kv_dtype: float16``). Only
plain ``KVCache`` layers holding float32 are converted; others are kept as they are.
"""

from __future__ import annotations

import copy
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache


def _layer(keys: mx.array, values: mx.array, offset: int, dtype: Any) -> KVCache:
    layer = KVCache()
    layer.keys = keys[..., :offset, :].astype(dtype)
    layer.values = values[..., :offset, :].astype(dtype)
    layer.offset = offset
    return layer


def compact(cache: list[Any], dtype: Any = mx.float16) -> list[Any]:
    """The entry to keep: float32 KV layers in ``dtype``, trimmed to what they hold."""
    out = [
        _layer(c.keys, c.values, c.offset, dtype)
        if type(c) is KVCache and c.keys is not None and c.keys.dtype == mx.float32 else c
        for c in cache
    ]
    mx.eval([c.state for c in out])
    return out


def served(cache: list[Any], native: Any) -> list[Any]:
    """A private copy for a new sequence, its KV layers back in the model's ``native`` dtype."""
    return [
        _layer(c.keys, c.values, c.offset, native)
        if type(c) is KVCache and c.keys is not None and c.keys.dtype != native
        else copy.deepcopy(c)
        for c in cache
    ]
