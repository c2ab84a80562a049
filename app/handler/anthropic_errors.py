"""Errors in Anthropic's envelope and with Anthropic's statuses (``/v1/messages*`` routes).

``{"type": "error", "error": {"type", "message"}, "request_id"}``; the error's ``param``
and ``code`` ride along inside ``error`` (Anthropic's SDKs ignore them; people read them)
and ``htdi`` beside it. Where the OpenAI routes answer 429 ``queue_full`` or 503 (queue
timeout, model loading, draining), Anthropic's clients expect 529 ``overloaded_error``: the
server, not the caller, is short of capacity, and the SDKs and Claude Code retry it.
"""

from __future__ import annotations

from typing import Any

from app.core.errors import APIError

OVERLOADED = 529
_OVERLOADED_CODES = frozenset({"queue_full", "queue_timeout", "model_loading", "shutting_down"})
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    OVERLOADED: "overloaded_error",
}


def anthropic_status(error: APIError) -> int:
    """The status an Anthropic client gets for ``error``."""
    if error.code in _OVERLOADED_CODES or error.status == 503:
        return OVERLOADED
    return error.status


def anthropic_error_type(status: int) -> str:
    return _TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def anthropic_envelope(error: APIError, htdi: dict[str, Any] | None) -> dict[str, Any]:
    """The body of an error response, or the data of a stream's ``error`` event."""
    detail: dict[str, Any] = {
        "type": anthropic_error_type(anthropic_status(error)),
        "message": error.message,
    }
    if error.param is not None:
        detail["param"] = error.param
    if error.code is not None:
        detail["code"] = error.code
    body: dict[str, Any] = {"type": "error", "error": detail}
    if htdi is not None:
        body["request_id"] = htdi.get("requestId")
        body["htdi"] = htdi
    return body
