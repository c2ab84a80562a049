"""Exception handlers: every failure leaves in its dialect's envelope, never FastAPI's 422.

Routes under ``/v1/messages`` speak Anthropic's envelope and statuses
(:mod:`app.handler.anthropic_errors`); every other route OpenAI's."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.validation import validation_error
from app.core.context import RequestContext
from app.core.errors import APIError, envelope
from app.handler.anthropic_errors import anthropic_envelope, anthropic_status

ANTHROPIC_ROUTES = "/v1/messages"


def speaks_anthropic(path: str) -> bool:
    """Whether ``path`` is one of the Anthropic dialect's routes."""
    return path == ANTHROPIC_ROUTES or path.startswith(ANTHROPIC_ROUTES + "/")


def error_payload(
    path: str, error: APIError, htdi: dict[str, Any] | None
) -> tuple[int, dict[str, Any]]:
    """The status and body that tell ``error`` to a client of ``path``'s dialect."""
    if speaks_anthropic(path):
        return anthropic_status(error), anthropic_envelope(error, htdi)
    return error.status, envelope(error, htdi)


def request_context(request: Request) -> RequestContext:
    """The HTDI context the middleware put on the scope."""
    return request.scope["state"]["ctx"]


def error_response(request: Request, error: APIError) -> JSONResponse:
    ctx = request_context(request)
    status, body = error_payload(request.url.path, error, ctx.htdi())
    return JSONResponse(body, status_code=status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        headers = dict(exc.headers or {})  # Starlette's 405 carries the route's Allow
        return error_response(
            request, APIError(exc.status_code, str(exc.detail), code=code, headers=headers)
        )
