"""Server-sent events framing for streamed answers.

OpenAI's chat and legacy completions send bare ``data:`` lines and end with
``data: [DONE]``; the Responses API names each event (``event: response.created``) after
its ``type`` and sends no ``[DONE]``. Keep-alives are comments in both.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from app.core.context import RequestContext
from app.core.errors import APIError, envelope
from app.generation.events import KEEP_ALIVE

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEP_ALIVE_FRAME = b": keep-alive\n\n"


def _json(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _data(payload: Any) -> bytes:
    return b"data: " + _json(payload) + b"\n\n"


def _named(payload: dict[str, Any]) -> bytes:
    return b"event: " + str(payload["type"]).encode() + b"\n" + _data(payload)


async def frame(items: AsyncIterator[Any], ctx: RequestContext) -> AsyncIterator[bytes]:
    """Chunks become ``data:`` lines; an error ends the stream with one error event."""
    try:
        async for item in items:
            if item is KEEP_ALIVE:
                yield KEEP_ALIVE_FRAME
            elif isinstance(item, APIError):
                yield _data(envelope(item, ctx.htdi()))
                break
            else:
                yield _data(item)
    except APIError as exc:
        yield _data(envelope(exc, ctx.htdi()))
    yield b"data: [DONE]\n\n"


async def frame_named(items: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """Typed events (their ``type`` is the SSE event name); the dialect reports its own
    errors as events, so nothing is added at the end."""
    async for item in items:
        yield KEEP_ALIVE_FRAME if item is KEEP_ALIVE else _named(item)


def sse_response(items: AsyncIterator[Any], ctx: RequestContext) -> StreamingResponse:
    return _streaming(frame(items, ctx))


def named_sse_response(items: AsyncIterator[Any]) -> StreamingResponse:
    return _streaming(frame_named(items))


def _streaming(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
