"""Each language model's prefix-cache settings: RAM budget, tenant scope and disk tier.

The settings give defaults, the model's registry entry may override the budget and scope.
The disk tier lives under ``<cache_dir>/prefix-cache/<model digest>``: the digest names the
weights (registry source and hashes, weights dtype, a local source's modification time),
so entries made by other weights are never looked at.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from app.config import Settings
from app.engine.lm.prefix_config import PrefixCacheConfig
from app.lifecycle.registry import ModelSpec


def model_digest(spec: ModelSpec, settings: Settings) -> str:
    parts = {
        "id": spec.id, "source": spec.source, "sha256": spec.sha256,
        "file_sha256": spec.file_sha256, "weights": settings.weights_dtype,
    }
    for source in spec.source if isinstance(spec.source, list) else [spec.source]:
        path = Path(source).expanduser()
        if ":" not in source.split("/")[0] and path.exists():  # a local file or folder
            parts[f"mtime:{source}"] = path.stat().st_mtime_ns
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def shared_scope(spec: ModelSpec, settings: Settings) -> bool:
    """Whether every tenant shares this model's prefix cache."""
    return (spec.prefix_cache_scope or settings.prefix_cache_scope) == "shared"


def prefix_cache_config(
    spec: ModelSpec, settings: Settings, memory_budget: int
) -> PrefixCacheConfig:
    """The engine's :class:`PrefixCacheConfig` for ``spec``."""
    explicit = spec.prefix_cache_bytes
    if explicit is None:
        explicit = settings.prefix_cache_bytes
    digest = model_digest(spec, settings)
    disk = settings.prefix_cache_disk == "on" and settings.prefix_cache_disk_bytes > 0
    return PrefixCacheConfig(
        max_bytes=explicit,
        auto_tokens=settings.prefix_cache_tokens,
        auto_cap_bytes=int(memory_budget * settings.prefix_cache_memory_share),
        disk_dir=settings.cache_dir / "prefix-cache" / digest[:32] if disk else None,
        disk_max_bytes=settings.prefix_cache_disk_bytes,
        disk_write_bytes_per_hour=settings.prefix_cache_disk_write_bytes_per_hour,
        model_digest=digest,
        kv_store=settings.prefix_cache_kv_dtype,
    )
