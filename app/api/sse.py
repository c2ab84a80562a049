"""Server-sent events framing for streamed completions.

OpenAI's streams are unnamed ``data:`` events ending with ``data: [DONE]``; a dialect whose
events have names (Anthropic's) yields :class:`~app.handler.sse_event.NamedEvent` items and
passes ``error_event`` (how an error after the first byte is told) and ``done=False``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from app.core.context import RequestContext
from app.core.errors import APIError, envelope
from app.generation.events import KEEP_ALIVE
from app.handler.sse_event import NamedEvent

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ErrorEvent = Callable[[APIError, RequestContext], Any]


def _data(payload: Any) -> bytes:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"


def _event(item: Any) -> bytes:
    if isinstance(item, NamedEvent):
        return b"event: " + item.name.encode() + b"\n" + _data(item.data)
    return _data(item)


def _openai_error(error: APIError, ctx: RequestContext) -> Any:
    return envelope(error, ctx.htdi())


async def frame(
    items: AsyncIterator[Any],
    ctx: RequestContext,
    error_event: ErrorEvent = _openai_error,
    done: bool = True,
) -> AsyncIterator[bytes]:
    """Chunks become events; an error ends the stream with one error event."""
    try:
        async for item in items:
            if item is KEEP_ALIVE:
                yield b": keep-alive\n\n"
            elif isinstance(item, APIError):
                yield _event(error_event(item, ctx))
                break
            else:
                yield _event(item)
    except APIError as exc:
        yield _event(error_event(exc, ctx))
    if done:
        yield b"data: [DONE]\n\n"


def sse_response(
    items: AsyncIterator[Any],
    ctx: RequestContext,
    error_event: ErrorEvent = _openai_error,
    done: bool = True,
) -> StreamingResponse:
    return StreamingResponse(
        frame(items, ctx, error_event, done), media_type="text/event-stream", headers=SSE_HEADERS
    )
