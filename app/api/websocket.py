"""WebSocket handshakes: refused with an HTTP envelope (the server has no WebSocket routes).

With a WebSocket library installed, uvicorn hands upgrade requests to the app as
``websocket`` scopes; unrouted ones were closed, which uvicorn turns into a bare 403. The
ASGI denial-response extension lets the refusal be a normal JSON envelope instead.
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from app.core.context import (
    RequestContext,
)
from app.core.errors import APIError, envelope


async def refuse_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    ctx = RequestContext.from_headers(Headers(scope=scope))
    await receive()  # websocket.connect
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    error = APIError(403, "This server has no WebSocket endpoints; use HTTP (streams are "
                     "server-sent events).", code="websocket_not_supported")
    body = json.dumps(envelope(error, ctx.htdi())).encode()
    response_headers = [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]
    response_headers += [(k.lower().encode(), v.encode())
                         for k, v in ctx.response_headers().items()]
    await send({"type": "websocket.http.response.start", "status": error.status,
                "headers": response_headers})
    await send({"type": "websocket.http.response.body", "body": body})
