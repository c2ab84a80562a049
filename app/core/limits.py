"""Checks on a buffered request body before FastAPI parses it.

FastAPI decodes bytes with ``json.loads``, which accepts UTF-16/32 and lets encoded or
escaped lone surrogates through as Python strings; deep nesting costs recursion in the
parser and in Pydantic. So a JSON body is refused here, with a 400 envelope, when it is
not UTF-8, nests deeper than the limit, or carries a lone surrogate. Malformed JSON is left
to FastAPI, which answers it with the usual ``invalid_json`` 400.
"""

from __future__ import annotations

import json
import re
from typing import Any

from app.core.errors import APIError

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def is_json_content(content_type: str | None) -> bool:
    """FastAPI parses a body as JSON when it says so or says nothing."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def check_json_body(body: bytes, max_depth: int) -> APIError | None:
    """Return the error for a body that must not reach the JSON parser, else None."""
    if not body:
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return APIError(
            400,
            f"The request body is not valid UTF-8 (byte {exc.start}).",
            code="invalid_encoding",
        )
    # Nesting deeper than max_depth needs more than max_depth brackets: most bodies skip the walk.
    could_nest = text.count("{") + text.count("[") > max_depth
    if not could_nest and not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        data = json.loads(text)
    except RecursionError:
        return _too_deep(max_depth)
    except ValueError:
        return None  # malformed: FastAPI reports it as invalid_json
    return _walk(data, max_depth)


def _walk(data: Any, max_depth: int) -> APIError | None:
    """Iterative walk: nesting depth and lone surrogates in keys and strings."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                return _too_deep(max_depth)
            for key, item in value.items():
                if _has_lone_surrogate(key):
                    return _surrogate()
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > max_depth:
                return _too_deep(max_depth)
            stack.extend((item, depth + 1) for item in value if not _is_scalar(item))
        elif isinstance(value, str) and _has_lone_surrogate(value):
            return _surrogate()
    return None


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, int | float | bool)


def _has_lone_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _too_deep(max_depth: int) -> APIError:
    return APIError(
        400,
        f"The JSON body nests deeper than {max_depth} levels.",
        code="json_too_deep",
    )


def _surrogate() -> APIError:
    return APIError(
        400,
        "The JSON body contains a lone UTF-16 surrogate (\\ud800-\\udfff without its pair), "
        "which is not valid Unicode text.",
        code="invalid_encoding",
    )
