"""Race a handler against the client hanging up (non-streaming requests)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response

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


async def json_unless_disconnected(request: Request, run: Any, work: Awaitable[Any]) -> Response:
    """``work``'s JSON answer; 499 with the run closed if the client left before it."""
    try:
        result = await unless_disconnected(request, work)
    except ClientDisconnected:
        run.close()
        return Response(status_code=499)
    return JSONResponse(result)
