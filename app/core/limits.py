"""Checks on a buffered request body before it is parsed.

``json.loads`` accepts UTF-16/32 and lets encoded or escaped lone surrogates through as
Python strings; deep nesting costs recursion in the parser and in Pydantic. So a JSON body
is refused, with a 400 envelope, when it is not UTF-8, nests deeper than the limit, or
carries a lone surrogate. The depth is measured without parsing; only a body with a
surrogate escape is parsed here, and the parsed value is handed on so nothing is parsed
twice. Malformed JSON is left to the parser (``invalid_json``).
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


UNPARSED = object()  # preparse_json_body did not need to parse the body
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_EMPTY_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def check_json_body(body: bytes, max_depth: int) -> APIError | None:
    """Return the error for a body that must not reach the JSON parser, else None."""
    return preparse_json_body(body, max_depth)[0]


def preparse_json_body(body: bytes, max_depth: int) -> tuple[APIError | None, Any]:
    """The checks before parsing: ``(error, data)``, where ``data`` is the parsed body when
    the checks had to parse it (lone-surrogate escapes), else :data:`UNPARSED`."""
    if not body:
        return None, UNPARSED
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return APIError(
            400,
            f"The request body is not valid UTF-8 (byte {exc.start}).",
            code="invalid_encoding",
        ), UNPARSED
    # Nesting deeper than max_depth needs more than max_depth brackets: most bodies skip this.
    if text.count("{") + text.count("[") > max_depth and _nests_deeper(body, max_depth):
        return _too_deep(max_depth), UNPARSED
    if not _SURROGATE_ESCAPE.search(body):
        return None, UNPARSED
    try:
        data = json.loads(text)
    except ValueError:
        return None, UNPARSED  # malformed: the parser reports it as invalid_json
    return _walk(data, max_depth), data


def _nests_deeper(body: bytes, max_depth: int) -> bool:
    """Nesting depth without parsing: drop strings and all but brackets, then peel off
    innermost pairs, one level per pass (C-speed regex passes; no Python walk)."""
    skeleton = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for _ in range(max_depth):
        if not skeleton:
            return False
        skeleton, peeled = _EMPTY_PAIR.subn(b"", skeleton)
        if not peeled:
            return False  # unbalanced: the parser reports it
    return bool(skeleton)


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
