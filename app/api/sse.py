"""Server-sent events framing for streamed completions."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from app.core.context import RequestContext
from app.core.errors import APIError, envelope
from app.generation.events import KEEP_ALIVE

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _data(payload: Any) -> bytes:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"


async def frame(
    items: AsyncIterator[Any], ctx: RequestContext, done: bool = True
) -> AsyncIterator[bytes]:
    """Chunks become ``data:`` lines; an error ends the stream with one error event;
    ``done``: OpenAI's closing ``data: [DONE]`` (llama.cpp's routes send none)."""
    try:
        async for item in items:
            if item is KEEP_ALIVE:
                yield b": keep-alive\n\n"
            elif isinstance(item, APIError):
                yield _data(envelope(item, ctx.htdi()))
                break
            else:
                yield _data(item)
    except APIError as exc:
        yield _data(envelope(exc, ctx.htdi()))
    if done:
        yield b"data: [DONE]\n\n"


def sse_response(
    items: AsyncIterator[Any], ctx: RequestContext, done: bool = True
) -> StreamingResponse:
    return StreamingResponse(
        frame(items, ctx, done), media_type="text/event-stream", headers=SSE_HEADERS
    )
