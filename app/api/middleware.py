"""Pure ASGI middleware: the edge of every request.

In order: HTDI ids; refusal while draining (503 ``shutting_down``); the API-key check;
the browser checks (Host, Origin, form bodies); the body, buffered under its size limit
(413 while reading, chunked too; its encoding, surrogates and depth are checked where it
is parsed, ``app/api/body.py``); then the app, with a last-resort 500. When
the response is over it closes the request's timer, counts the HTTP metrics and writes
the request's JSON log line.

It is pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses pass through untouched
and the client's ``http.disconnect`` still reaches the handlers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import ApiKeyGuard
from app.api.browser_guard import BrowserGuard
from app.api.openapi import http_routes
from app.api.websocket import refuse_websocket
from app.core.context import (
    RequestContext,
)
from app.core.errors import APIError, envelope, internal_error, shutting_down
from app.core.request_log import access_record, log_access, prompt_text
from app.generation.timing import RequestTimer

log = logging.getLogger(__name__)
# Polled by load balancers and Prometheus every few seconds: logged only when they fail,
# unless --access-log-probes.
PROBE_ROUTES = frozenset({"/health", "/ready", "/health/ready", "/metrics"})

_BODY_METHODS = {"POST", "PUT", "PATCH"}
# Probes and scrapes: served while draining and not counted as in-flight work.
OPERATIONAL_PATHS = frozenset({"/health", "/ready", "/health/ready", "/metrics"})


class HTDIMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_header_bytes: int | None = None,
        guard: ApiKeyGuard | None = None,
        lifecycle: Any = None,
        metrics: Any = None,
        log_prompts: bool = False,
        log_probes: bool = False,
        body_timeout_s: float | None = None,
        browser: BrowserGuard | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.guard = guard
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.log_prompts = log_prompts
        self.log_probes = log_probes
        self.body_timeout_s = body_timeout_s
        self.browser = browser

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await refuse_websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        ctx = RequestContext.from_headers(headers)
        ctx.timer = RequestTimer(sink=self.metrics, started=ctx.started)
        scope.setdefault("state", {})["ctx"] = ctx
        status = 500
        started = False

        async def send_with_ids(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                out = MutableHeaders(scope=message)
                for key, value in ctx.response_headers().items():
                    out[key] = value
            await send(message)

        counted = scope["path"] not in OPERATIONAL_PATHS
        self._count(counted, +1)
        body = b""
        t0 = time.perf_counter()
        try:
            error = self._refusal(scope)
            if error is None and scope["method"] in _BODY_METHODS:
                body_or_error = await self._read_body(headers, receive)
                if isinstance(body_or_error, APIError):
                    error = body_or_error
                else:
                    body = body_or_error
                    receive = _replay(body, receive)
            if error is not None:
                await _send_error(send_with_ids, error, ctx)
                return
            try:
                await self.app(scope, receive, send_with_ids)
            except Exception:  # noqa: BLE001 - last resort: never leak a traceback
                log.exception("unhandled error for request %s", ctx.request_id)
                if not started:
                    await _send_error(send_with_ids, internal_error(), ctx)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when its shutdown grace ends, and would
            # answer a request without a response yet with a plain-text 500.
            if not started:
                await _send_error(send_with_ids, shutting_down(), ctx)
            raise
        finally:
            # bookkeeping first: once the in-flight gauge drops, the request's metrics are in
            self._finish(scope, ctx, status, time.perf_counter() - t0, body)
            self._count(counted, -1)

    def _count(self, counted: bool, delta: int) -> None:
        """In-flight work, for the drain and the gauge (probes and scrapes excluded)."""
        if not counted:
            return
        if self.lifecycle is not None:
            self.lifecycle.inflight += delta
        if self.metrics is not None:
            self.metrics.in_flight.inc(delta)

    def _refusal(self, scope: Scope) -> APIError | None:
        """431 over the header limit, 503 while draining (probes excepted), 401 without a key,
        then what a web page must not do (app/api/browser_guard.py)."""
        if self.max_header_bytes is not None:
            size = _header_bytes(scope)
            if size > self.max_header_bytes:
                return APIError(
                    431,
                    f"The request line and headers are {size} bytes; the limit is "
                    f"{self.max_header_bytes} bytes.",
                    code="request_header_fields_too_large",
                    headers={"Connection": "close"},
                )
        if (
            self.lifecycle is not None
            and self.lifecycle.draining
            and scope["path"] not in OPERATIONAL_PATHS
        ):
            return shutting_down()
        if self.guard is not None and (error := self.guard.check(scope)) is not None:
            return error
        if self.browser is not None:
            return self.browser.check(scope)  # Host, Origin, form bodies
        return None

    def _finish(
        self, scope: Scope, ctx: RequestContext, status: int, seconds: float, body: bytes
    ) -> None:
        try:
            ctx.timer.close()
            route = _route_template(scope)
            if self.metrics is not None:
                self.metrics.observe_http(scope["method"], route, status, seconds, ctx.model)
            if status >= 400 or self.log_probes or route not in PROBE_ROUTES:
                prompt = prompt_text(body) if self.log_prompts and body else None
                log_access(access_record(ctx, method=scope["method"], route=route,
                                         path=scope["path"], status=status, prompt=prompt))
        except Exception:  # noqa: BLE001 - bookkeeping must never fail a request
            log.exception("request bookkeeping failed for %s", ctx.request_id)

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
        deadline = None if self.body_timeout_s is None else time.monotonic() + self.body_timeout_s
        while True:
            try:
                message = await _receive_by(receive, deadline)
            except TimeoutError:
                return APIError(
                    408, f"The request body did not arrive within {self.body_timeout_s:g} s.",
                    code="request_timeout", headers={"Connection": "close"},
                )
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return _too_large(size, limit, at_least=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _receive_by(receive: Receive, deadline: float | None) -> Message:
    """``receive()``, raising ``TimeoutError`` once ``deadline`` (monotonic) has passed."""
    if deadline is None:
        return await receive()
    return await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))


def _header_bytes(scope: Scope) -> int:
    """Size of the request line and headers as sent (h11 only bounds incomplete ones)."""
    line = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 16
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


def _route_template(scope: Scope) -> str:
    """The matched route's template (bounded label values); ``other`` when none matched.

    Requests refused before routing (413, 401, 503...) have no matched route; their path
    counts when it is one of the app's parameterless routes.
    """
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    app = scope.get("app")
    known = getattr(app, "_exact_route_paths", None)
    if known is None and app is not None:
        known = {p for p, _ in http_routes(app) if "{" not in p}
        app._exact_route_paths = known
    return scope["path"] if known and scope["path"] in known else "other"


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
