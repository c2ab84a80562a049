"""``python -m app models``: each registry model, whether it is cached, and whether a server
running on the configured host and port has it loaded."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from app.config import Settings
from app.lifecycle.manager import resolve_model_path
from app.lifecycle.registry import ModelRegistry, ModelSpec
from app.models.sources.resolve import ModelSourceError


def running_states(settings: Settings, timeout: float = 0.5) -> dict[str, str]:
    """Model id → state, from a server answering on host:port (empty when none does)."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    try:
        with urllib.request.urlopen(f"http://{host}:{settings.port}/v1/models",
                                    timeout=timeout) as resp:
            data = json.load(resp)
    except (OSError, ValueError):
        return {}
    return {m.get("id"): (m.get("metadata") or {}).get("state", "?")
            for m in data.get("data", []) if isinstance(m, dict)}


def cached(spec: ModelSpec, settings: Settings) -> bool:
    """Is the model's file in the cache (or on disk) without fetching anything?"""
    try:
        resolve_model_path(spec, settings.model_copy(update={"offline": True}))
    except (ModelSourceError, OSError, ValueError):
        return False
    return True


def source_text(spec: ModelSpec) -> str:
    if isinstance(spec.source, list):
        return f"{spec.source[0]} (+{len(spec.source) - 1} more parts)"
    return spec.source


def model_rows(registry: ModelRegistry, settings: Settings) -> list[tuple[str, ...]]:
    states: dict[str, Any] = running_states(settings)
    rows = []
    for spec in registry:
        state = states.get(spec.id) or ("cached" if cached(spec, settings) else "not cached")
        rows.append((spec.id, spec.type, ",".join(spec.capabilities) or "-", state,
                     source_text(spec)))
    return rows
