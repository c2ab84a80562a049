"""Pure ASGI middleware: HTDI headers on every response, body-size limit, last-resort 500.

It is pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses pass through untouched
and the client's ``http.disconnect`` still reaches the handlers.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.context import (
    HOUSE_ID_HEADER,
    REQUEST_ID_HEADER,
    RequestContext,
    new_request_id,
    sane_id,
)
from app.core.errors import APIError, envelope, internal_error

log = logging.getLogger(__name__)

_BODY_METHODS = {"POST", "PUT", "PATCH"}


class HTDIMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        header_id = sane_id(headers.get(REQUEST_ID_HEADER))
        ctx = RequestContext(
            request_id=header_id or new_request_id(),
            house_id=sane_id(headers.get(HOUSE_ID_HEADER)),
            request_id_from_header=header_id is not None,
        )
        scope.setdefault("state", {})["ctx"] = ctx
        started = False

        async def send_with_ids(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                out = MutableHeaders(scope=message)
                for key, value in ctx.response_headers().items():
                    out[key] = value
            await send(message)

        if scope["method"] in _BODY_METHODS:
            body_or_error = await self._read_body(headers, receive)
            if isinstance(body_or_error, APIError):
                await _send_error(send_with_ids, body_or_error, ctx)
                return
            receive = _replay(body_or_error, receive)
        try:
            await self.app(scope, receive, send_with_ids)
        except Exception:  # noqa: BLE001 - last resort: never leak a traceback to the client
            log.exception("unhandled error for request %s", ctx.request_id)
            if not started:
                await _send_error(send_with_ids, internal_error(), ctx)

    async def _read_body(self, headers: Headers, receive: Receive) -> bytes | APIError:
        """Buffer the body, refusing it as soon as it passes the limit (chunked too)."""
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return APIError(400, "Invalid Content-Length header.")
            if int(declared) > limit:
                return _too_large(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return _too_large(size, limit, at_least=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> APIError:
    qualifier = "at least " if at_least else ""
    return APIError(
        413,
        f"Request body is {qualifier}{size} bytes; the limit is {limit} bytes.",
        code="request_too_large",
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hand the buffered body to the app once, then pass through (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, error: APIError, ctx: RequestContext) -> None:
    payload: dict[str, Any] = envelope(error, ctx.htdi())
    raw = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(raw)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})
