"""A named server-sent event (``event: NAME`` then ``data: JSON``), for dialects whose
streams name their events (Anthropic Messages); the API layer frames it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NamedEvent:
    name: str
    data: dict[str, Any]
