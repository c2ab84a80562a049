"""OpenAI error envelopes: one exception type, one JSON shape."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error the client should see, with its HTTP status and OpenAI fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }


def invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str) -> APIError:
    return APIError(
        404,
        f"The model {name!r} does not exist. GET /v1/models lists the models served here.",
        param="model",
        code="model_not_found",
    )


def model_not_capable(name: str, capability: str) -> APIError:
    return APIError(
        400,
        f"The model {name!r} does not support {capability}.",
        param="model",
        code="model_not_capable",
    )


def context_length_exceeded(
    prompt_tokens: int, max_tokens: int, context: int, *, param: str = "messages"
) -> APIError:
    return APIError(
        400,
        f"This model's maximum context length is {context} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for "
        f"the completion). Please reduce the prompt or max_tokens.",
        param=param,
        code="context_length_exceeded",
    )


def model_loading(name: str) -> APIError:
    return APIError(
        503,
        f"The model {name!r} is still loading; retry shortly.",
        type="server_error",
        code="model_loading",
        headers={"Retry-After": "2"},
    )


def queue_full(message: str) -> APIError:
    return APIError(
        429,
        message,
        type="rate_limit_error",
        code="queue_full",
        headers={"Retry-After": "1"},
    )


def shutting_down() -> APIError:
    return APIError(
        503,
        "The server is shutting down.",
        type="server_error",
        code="shutting_down",
        headers={"Connection": "close", "Retry-After": "1"},
    )


def internal_error(
    message: str = "The server had an error while processing your request.",
) -> APIError:
    return APIError(500, message, type="server_error", code="internal_error")


def envelope(error: APIError, htdi: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": error.body()}
    if htdi is not None:
        body["htdi"] = htdi
        body["error"]["requestId"] = htdi.get("requestId")
    return body
