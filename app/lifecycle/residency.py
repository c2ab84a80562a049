"""Which models may stay in memory: keep-alive expiry and the global memory budget.

Pure policy, no MLX: the manager asks it what to evict and when.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

FOREVER = -1.0


def default_memory_budget() -> int:
    """Three quarters of physical memory (models, KV caches and the process share it)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 << 30
    return int(total * 0.75)


def keep_alive_of(managed: Any, default: float) -> float:
    """Seconds an idle model stays loaded; -1 forever, 0 unload as soon as it is idle.

    Preloaded models stay forever unless their registry entry says otherwise.
    """
    if managed.spec.keep_alive is not None:
        return float(managed.spec.keep_alive)
    return FOREVER if managed.spec.preload else default


def expired(models: Iterable[Any], default_keep_alive: float, now: float | None = None) -> list:
    """Loaded, idle models whose keep-alive has run out."""
    now = time.time() if now is None else now
    out = []
    for managed in models:
        if managed.state != "loaded" or managed.leases > 0:
            continue
        keep = keep_alive_of(managed, default_keep_alive)
        if keep < 0:
            continue
        if now - (managed.last_used or 0.0) >= keep:
            out.append(managed)
    return out


def estimate_bytes(managed: Any, path_size: int) -> int:
    """Memory a load will take: what it took last time, else a guess from the files
    (quantized GGUFs grow ~6x when dequantized to float32 on CPU)."""
    if managed.memory_bytes:
        return int(managed.memory_bytes)
    factor = 6 if managed.spec.source_name.endswith(".gguf") and managed.spec.type == "lm" else 1.2
    return int(path_size * factor)


def eviction_order(models: Iterable[Any], exclude: Any) -> list:
    """Idle loaded models, least recently used first; busy ones are never candidates."""
    idle = [
        m for m in models
        if m is not exclude and m.state == "loaded" and m.leases == 0
    ]
    return sorted(idle, key=lambda m: m.last_used or 0.0)


def files_size(path: Any) -> int:
    """Bytes on disk of a model file or directory (0 when unknown)."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0
