"""uvicorn's h11 protocol with OpenAI envelopes and connection limits.

uvicorn answers requests h11 cannot parse with a plain-text 400 before they reach the
app; this subclass sends the JSON envelope instead (431 when the request line and headers
passed ``--max-header-bytes``, h11's ``max_incomplete_event_size``).

It also bounds what a client can hold without sending a request (docs/PHASE4_TIER3A_
CONTRACT.md, "Connections"): uvicorn has no header-read timeout (a fresh connection that
sends nothing, or a header trickled a byte at a time, stays open forever), and its
``limit_concurrency`` answers 503 only once a request arrives, so idle sockets still use up
file descriptors. Here:

- the request line and headers must arrive within ``header_timeout_s`` of the connection
  opening (or of a new request's first byte on a kept-alive one): else 408 and close;
- at most ``max_connections`` connections are open: a new one past the cap closes the
  longest-idle connection (one with no request in progress), or, when every connection
  is serving a request, is answered 503 ``too_many_connections`` and closed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.core.context import new_request_id

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}


def envelope_bytes(status: int, code: str, message: str) -> tuple[bytes, str]:
    """A complete ``Connection: close`` HTTP/1.1 response holding an error envelope."""
    request_id = new_request_id()
    error_type = "server_error" if status >= 500 else "invalid_request_error"
    body = json.dumps({
        "error": {"message": message, "type": error_type, "param": None, "code": code,
                  "requestId": request_id},
        "htdi": {"requestId": request_id, "houseId": None, "source": None,
                 "latencyMs": 0.0, "model": None},
    }).encode()
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"x-request-id: %s\r\nconnection: close\r\n" % (
            status, _REASONS[status], len(body), request_id.encode())
    )
    if status == 503:
        head += b"retry-after: 1\r\n"
    return head + b"\r\n" + body, request_id


class EnvelopeH11Protocol(H11Protocol):
    """h11 with envelopes, a header-read deadline and a connection cap.

    ``header_timeout_s`` and ``max_connections`` are class attributes: :func:`protocol_class`
    makes a subclass per server carrying its settings (uvicorn instantiates the class
    itself) and its bookkeeping: ``_idle``, the connections without a request in progress
    in the order they became idle, and ``_closing``, those the cap closed that are not gone
    yet. Eviction is O(1): a flood of connections must not cost a scan of every connection
    per arrival.
    """

    header_timeout_s: float | None = None
    max_connections: int | None = None
    _idle: dict[EnvelopeH11Protocol, None] = {}
    _closing: set[EnvelopeH11Protocol] = set()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        if self.max_connections is not None:
            if not self._make_room():
                self._closing.add(self)
                self._refuse(503, "too_many_connections",
                             f"The server has {self.max_connections} connections open, all "
                             "serving requests; retry shortly.")
                return
            self._idle[self] = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._idle.pop(self, None)
        self._closing.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # the first bytes of a request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_timer()  # the request line and headers are in
            self._idle.pop(self, None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.max_connections is not None and self.idle():
            self._idle.pop(self, None)
            self._idle[self] = None  # idle since now: the end of the line

    # -- the cap -------------------------------------------------------------

    def idle(self) -> bool:
        """No request in progress: waiting for (the rest of) a request head, or kept alive."""
        if self.transport.is_closing():
            return False
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )

    def _make_room(self) -> bool:
        """True when this connection may stay: under the cap, or an idle one was closed.

        A connection trickling its request head stays where it was in the line: bytes that
        do not finish a head do not make it fresh.
        """
        if len(self.connections) - len(self._closing) <= self.max_connections:
            return True
        while self._idle:
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            if oldest is not self and oldest.idle():
                self._closing.add(oldest)
                oldest.transport.close()
                return True
        return False

    # -- the header deadline ---------------------------------------------------

    def _arm_head_timer(self) -> None:
        if self.header_timeout_s is not None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why it is closed
            self._refuse(408, "request_timeout",
                         f"The request line and headers did not arrive within "
                         f"{self.header_timeout_s:g} s.")
        else:
            self.transport.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer without h11 (no request was parsed) and close."""
        raw, _ = envelope_bytes(status, code, message)
        self.transport.write(raw)
        self.transport.close()

    # -- unparseable requests ----------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size
        oversized = limit is not None and len(self.conn.trailing_data[0]) > limit
        if oversized:
            status, code = 431, "request_header_fields_too_large"
            message = f"The request line and headers exceed {limit} bytes."
        else:
            status, code, message = 400, "invalid_http_request", "Invalid HTTP request received."
        self._disarm_head_timer()
        self._refuse(status, code, message)


def protocol_class(header_timeout_s: float | None, max_connections: int | None) -> type[Any]:
    """An :class:`EnvelopeH11Protocol` subclass bound to these limits."""
    return type("LimitedH11Protocol", (EnvelopeH11Protocol,), {
        "header_timeout_s": header_timeout_s, "max_connections": max_connections,
        "_idle": {}, "_closing": set(),
    })
