"""CORS for browser clients (the official OpenAI JS SDK included), answers as envelopes.

Starlette's middleware does the protocol; this subclass changes what it says:

- allowed origins may send any request header (the SDK adds ``X-Stainless-*`` headers),
  so a preflight reflects ``Access-Control-Request-Headers``;
- a disallowed origin gets no ``Access-Control-*`` header at all (Starlette still sent
  ``Access-Control-Expose-Headers``), and its preflight a 403 envelope instead of a
  plain-text 400; a preflight for a method we do not serve gets a 400 envelope;
- preflights carry ``X-Request-ID`` like every other response (they never reach the
  HTDI middleware: CORS is outermost, so 401s carry CORS headers too).
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Send

from app.core.context import (
    RequestContext,
)
from app.core.errors import APIError, envelope

ALLOWED_METHODS = ("GET", "HEAD", "POST", "DELETE", "OPTIONS")  # DELETE: stored responses
EXPOSED_HEADERS = ("X-Request-ID", "X-House-ID")


class EnvelopeCORSMiddleware(CORSMiddleware):
    def __init__(self, app: ASGIApp, *, allow_origins: list[str], max_age: int) -> None:
        super().__init__(
            app, allow_origins=allow_origins, allow_methods=ALLOWED_METHODS,
            allow_headers=["*"], expose_headers=EXPOSED_HEADERS, max_age=max_age,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        ctx = RequestContext.from_headers(request_headers)
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            response.headers.update(ctx.response_headers())
            return response
        origin = request_headers["origin"]
        if not self.is_allowed_origin(origin):
            error = APIError(403, f"CORS requests from {origin[:100]!r} are not allowed; "
                             "the server's --cors-origins lists the origins that are.",
                             code="cors_origin_not_allowed")
            headers = {"Vary": "Origin"}  # nothing a browser would read as permission
        else:
            method = request_headers["access-control-request-method"]
            error = APIError(400, f"CORS requests may use {', '.join(ALLOWED_METHODS)}, "
                             f"not {method[:20]!r}.", code="cors_method_not_allowed")
            headers = {k: v for k, v in response.headers.items()
                       if k.lower().startswith("access-control-") or k.lower() == "vary"}
        return JSONResponse(envelope(error, ctx.htdi()), status_code=error.status,
                            headers={**headers, **ctx.response_headers()})

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        origin = request_headers.get("origin")
        if (message["type"] == "http.response.start" and origin is not None
                and not self.is_allowed_origin(origin)):
            headers = MutableHeaders(scope=message)
            headers["Vary"] = ", ".join([*headers.getlist("Vary"), "Origin"])
            await send(message)
            return
        await super().send(message, send, request_headers)
