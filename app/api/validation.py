"""Pydantic validation errors as one OpenAI-style 400: the field the user wrote, once, and
what it should be.

Pydantic reports a union field once per branch, with the branch's name in the location
(``prompt.str``, ``messages[0].content.list[TextPart][0].type``). Users wrote ``prompt`` and
``messages[0].content``: branch names are dropped, and when every branch failed at the top
(the value had the wrong type altogether) the message lists what the field accepts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from app.core.errors import APIError

_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
_PYDANTIC_TYPES = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})
_EXPECTED = {
    "string_type": "a string", "int_type": "an integer", "float_type": "a number",
    "bool_type": "a boolean", "list_type": "an array", "dict_type": "an object",
    "model_type": "an object", "model_attributes_type": "an object",
}


def _is_branch(part: Any) -> bool:
    """A union branch's name in a location, not a field name, list index or dict key."""
    if not isinstance(part, str):
        return False
    return part in _PYDANTIC_TYPES or not _FIELD.fullmatch(part)


def _user_loc(loc: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(p for p in loc if p != "body" and not _is_branch(p))


def param_name(loc: Sequence[Any]) -> str | None:
    """``messages[0].content`` from ``("body", "messages", 0, "content", "str")``."""
    text = ""
    for part in _user_loc(loc):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def _detail(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


_NOUNS = {"str": ("a string", "strings"), "int": ("an integer", "integers"),
          "float": ("a number", "numbers"), "bool": ("a boolean", "booleans")}
_LIST = re.compile(r"list\[(.+)\]")


def _noun(branch: str, plural: bool = False) -> str | None:
    """``an array of strings`` for the branch ``list[str]``; None when it has no plain name."""
    if match := _LIST.fullmatch(branch):
        inner = _noun(match[1], plural=True)
        return None if inner is None else ("arrays of " if plural else "an array of ") + inner
    if branch in _NOUNS:
        return _NOUNS[branch][plural]
    if branch[:1].isupper() and branch.isidentifier():
        return f"{branch} objects" if plural else f"a {branch} object"
    return None


def _expected(errors: list[dict[str, Any]]) -> str:
    """``a string or an array of strings`` from the branches that failed at the top."""
    seen: list[str] = []
    for error in errors:
        loc = error.get("loc", ())
        branch = loc[-1] if loc and _is_branch(loc[-1]) else None
        text = (branch and _noun(branch)) or _EXPECTED.get(error["type"]) or _detail(
            error).removeprefix("Input should be ")
        if text not in seen:
            seen.append(text)
    return seen[0] if len(seen) == 1 else ", ".join(seen[:-1]) + " or " + seen[-1]


def validation_error(errors: Sequence[dict[str, Any]]) -> APIError:
    """One 400 for a list of pydantic (or FastAPI) error dicts."""
    if not errors:
        return APIError(400, "The request is invalid.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return APIError(
            400,
            "We could not parse the JSON body of your request: "
            f"{first.get('ctx', {}).get('error', 'invalid JSON')}.",
            code="invalid_json",
        )
    target = _user_loc(first.get("loc", ()))
    same = [e for e in errors if _user_loc(e.get("loc", ()))[: len(target)] == target]
    # The branch that got furthest into the value says most about what is wrong with it.
    deepest = max(same, key=lambda e: len(_user_loc(e.get("loc", ()))))
    param = param_name(deepest.get("loc", ()))
    kind = deepest.get("type")
    if param is None and kind in {"model_type", "dict_type", "model_attributes_type"}:
        return APIError(400, "The request body must be a JSON object.")
    if kind == "missing" and param:
        return APIError(400, f"Missing required parameter: {param!r}.", param=param)
    if kind == "extra_forbidden" and param:
        return APIError(400, f"Unrecognized request argument supplied: {param}.", param=param)
    at_top = [e for e in same if _user_loc(e.get("loc", ())) == target]
    if len(at_top) > 1 and len(_user_loc(deepest.get("loc", ()))) == len(target):
        return APIError(400, f"Invalid type for {param!r}: expected {_expected(at_top)}.",
                        param=param)
    detail = _detail(deepest)
    message = f"Invalid value for {param!r}: {detail}." if param else f"{detail}."
    return APIError(400, message, param=param)
