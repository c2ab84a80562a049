"""A stream's heartbeat: something to send when a run has been silent for a while.

A run can be silent for minutes while text is held back (it may be a tool call) or tokens
come slowly; clients give up on a quiet stream (Claude Code aborts after 180 s without a
byte). A dialect wraps its run's events and sends its own keep-alive on each beat.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

T = TypeVar("T")


class _Beat:
    """Nothing arrived for ``every`` seconds."""


BEAT = _Beat()


async def with_heartbeat(items: AsyncIterator[T], every: float) -> AsyncIterator[T | Any]:
    """``items`` as they come, with :data:`BEAT` after each ``every`` seconds of silence."""
    iterator = aiter(items)
    pending: asyncio.Future | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield BEAT
                continue
            pending, finished = None, pending
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
