"""Exception handlers: every failure leaves as an OpenAI envelope, never FastAPI's 422."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.validation import validation_error
from app.core.context import RequestContext
from app.core.errors import APIError, envelope


def request_context(request: Request) -> RequestContext:
    """The HTDI context the middleware put on the scope."""
    return request.scope["state"]["ctx"]


def error_response(request: Request, error: APIError) -> JSONResponse:
    ctx = request_context(request)
    return JSONResponse(
        envelope(error, ctx.htdi()),
        status_code=error.status,
        headers=error.headers,
    )


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
        return error_response(
            request, APIError(exc.status_code, str(exc.detail), code=code)
        )
