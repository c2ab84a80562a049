"""Race a handler against the client hanging up (non-streaming requests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from app.api.sse import sse_response
from app.core.context import RequestContext

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before the response was ready."""


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it (which cancels its engine requests) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ClientDisconnected()


async def answer(request: Request, run: Any, work: Awaitable[dict[str, Any]]) -> Response:
    """The JSON answer of a queued ``run``; 499 (and the run closed) if the client left."""
    try:
        result = await unless_disconnected(request, work)
    except ClientDisconnected:
        run.close()
        return Response(status_code=499)
    return JSONResponse(result)


async def reply(
    request: Request,
    ctx: RequestContext,
    run: Any,
    stream: AsyncIterator[Any] | None,
    complete: Callable[[], Awaitable[dict[str, Any]]],
    done: bool = True,
) -> Response:
    """A generation route's response: SSE when ``stream`` is given (``done``: the closing
    ``[DONE]``), else ``complete()``'s JSON answer raced against the client leaving."""
    if stream is not None:
        return sse_response(stream, ctx, done)
    return await answer(request, run, complete())
