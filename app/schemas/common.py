"""What every request schema shares: strict types, unknown fields refused, null as default.

Types are strict (``n: "2"`` or ``n: true`` is a 400, not 2 or 1), as the contract promises;
an integer is still a valid float. OpenAI's SDKs send ``null`` for any optional parameter a
caller passed as ``None`` (``"n": null``), and OpenAI reads it as "the default": fields
whose default is not ``None`` say so with :func:`null_means_default`.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)


class StrictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def null_means_default(*names: str) -> Any:
    """A before-validator turning ``null`` into the field's default, for ``names``."""

    def fill(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name is not None:
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)
        return value

    return field_validator(*names, mode="before")(fill)


CHUNK_ITEMS = 16_384
_ITEM_ADAPTERS = {
    str: TypeAdapter(list[str], config=ConfigDict(strict=True)),
    int: TypeAdapter(list[int], config=ConfigDict(strict=True)),
    list: TypeAdapter(list[list[int]], config=ConfigDict(strict=True)),
}


def chunked_prompt(*names: str) -> Any:
    """A wrap validator for prompt-like unions (a string, or a list of strings, token ids or
    token-id lists) that validates a long list slice by slice.

    Large bodies are validated in a worker thread (``app/api/body.py``), but one Pydantic
    call holds the GIL throughout: a 900,000-item prompt held the event loop for a second or
    more. Between slices the GIL is let go (``time.sleep(0)``), so the loop keeps serving.
    The branch is chosen by the first item's type; anything unusual (or invalid) goes
    through the ordinary union validation, with its ordinary errors.
    """

    def validate(cls: type[BaseModel], value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(value, list) or len(value) <= CHUNK_ITEMS:
            return handler(value)
        adapter = _ITEM_ADAPTERS.get(type(value[0]))
        if adapter is None:
            return handler(value)
        out: list[Any] = []
        try:
            for start in range(0, len(value), CHUNK_ITEMS):
                out += adapter.validate_python(value[start:start + CHUNK_ITEMS])
                time.sleep(0)  # let the event loop's thread take the GIL
        except ValidationError:
            return handler(value)
        return out

    return field_validator(*names, mode="wrap")(validate)
