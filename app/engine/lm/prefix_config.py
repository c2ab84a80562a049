"""How big the prefix cache is and where its disk tier lives (plain data, no MLX).

The RAM budget defaults to ``auto_tokens`` of the model's KV cache (measured once the model
is loaded: :func:`app.engine.lm.prefix_cache.build_prefix_cache`), capped by the share of
the memory budget the lifecycle layer allows; so a small model keeps several long agent
prompts and a large one does not crowd out its own weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PrefixCacheConfig:
    """``max_bytes`` None: ``auto_tokens`` of the model's KV, at most ``auto_cap_bytes``."""

    max_bytes: int | None = None
    auto_tokens: int = 32768
    auto_cap_bytes: int = 1 << 30
    max_entries: int = 256
    disk_dir: Path | None = None  # None: no disk tier
    disk_max_bytes: int = 4 << 30
    disk_write_bytes_per_hour: int = 8 << 30
    model_digest: str = ""
    kv_store: str = "native"  # "float16": float32 KV kept as float16; "native": as computed

    def budget_bytes(self, per_token: int) -> int:
        if self.max_bytes is not None:
            return self.max_bytes
        return min(self.auto_cap_bytes, self.auto_tokens * per_token)
