"""Responses API input items → the neutral conversation the generation core renders.

Items: ``message`` (roles user / assistant / system / developer; text content parts),
``function_call`` and ``function_call_output`` (a tool round trip), ``reasoning`` (kept
in the record, not shown to the model), ``item_reference`` (resolved by the handler from
the store before it gets here). Anything else is a 400 that names the item.
"""

from __future__ import annotations

import json
from typing import Any

from app.core import errors
from app.generation.request import Message, ToolCall

TEXT_PARTS = {"input_text", "output_text", "text", "summary_text", "reasoning_text"}
UNSUPPORTED_PARTS = {"input_image": "images", "input_file": "files", "input_audio": "audio"}


def input_items(value: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """``input`` as a list of items (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value)


def conversation(instructions: str | None, items: list[dict[str, Any]]) -> list[Message]:
    """The messages a chat template sees: instructions first, then the items in order."""
    messages: list[Message] = []
    if instructions:
        messages.append(Message("system", instructions))
    call_names: dict[str, str] = {}
    for index, item in enumerate(items):
        kind = item.get("type") or ("message" if "role" in item else None)
        where = f"input[{index}]"
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = _function_call(item, where)
            call_names[call.id] = call.name
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and last.tool_call_id is None:
                last.tool_calls.append(call)
            else:
                messages.append(Message("assistant", "", tool_calls=[call]))
        elif kind == "function_call_output":
            call_id = _string(item, "call_id", where)
            messages.append(Message("tool", _output_text(item.get("output"), where),
                                    name=call_names.get(call_id), tool_call_id=call_id))
        elif kind == "reasoning":
            continue  # the model's own earlier thinking: recorded, not re-read
        else:
            raise errors.invalid_request(
                f"{where}: items of type {kind!r} are not supported by this server "
                "(supported: message, function_call, function_call_output, reasoning, "
                "item_reference).",
                param=where,
            )
    return messages


def _message(item: dict[str, Any], where: str) -> Message:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise errors.invalid_request(
            f"{where}.role must be one of user, assistant, system, developer.", param=where
        )
    content = item.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(_part_text(part, f"{where}.content[{i}]")
                       for i, part in enumerate(content))
    else:
        raise errors.invalid_request(
            f"{where}.content must be a string or a list of content parts.", param=where
        )
    return Message("system" if role == "developer" else role, text)


def _part_text(part: Any, where: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in TEXT_PARTS and isinstance(part.get("text"), str):
        return part["text"]
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return part["refusal"]
    if kind in UNSUPPORTED_PARTS:
        raise errors.invalid_request(
            f"{where}: {UNSUPPORTED_PARTS[kind]} are not supported by this server "
            "(text models only).",
            param=where,
        )
    raise errors.invalid_request(
        f"{where} must be a text content part (input_text or output_text).", param=where
    )


def _function_call(item: dict[str, Any], where: str) -> ToolCall:
    arguments = item.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(_string(item, "call_id", where), _string(item, "name", where), arguments)


def _output_text(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(_part_text(part, f"{where}.output[{i}]") for i, part in enumerate(output))
    raise errors.invalid_request(f"{where}.output must be a string.", param=where)


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise errors.invalid_request(f"{where}.{key} must be a non-empty string.", param=where)
    return value
