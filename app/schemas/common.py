"""What every request schema shares: strict types, unknown fields refused, null as default.

Types are strict (``n: "2"`` or ``n: true`` is a 400, not 2 or 1), as the contract promises;
an integer is still a valid float. OpenAI's SDKs send ``null`` for any optional parameter a
caller passed as ``None`` (``"n": null``), and OpenAI reads it as "the default": fields
whose default is not ``None`` say so with :func:`null_means_default`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class StrictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def null_means_default(*names: str) -> Any:
    """A before-validator turning ``null`` into the field's default, for ``names``."""

    def fill(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name is not None:
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)
        return value

    return field_validator(*names, mode="before")(fill)
