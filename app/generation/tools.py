"""Tool calling: prompt rendering, constrained calls, and parsing calls out of model text.

- ``tool_choice`` ``none``: tools are not shown to the model.
- ``auto``: tools go to the chat template when it knows them (``tools`` appears in the
  template); otherwise a fallback system message describes them and asks for
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the Hermes / Qwen format
  mlx-lm's ``json_tools`` parser reads). Calls are recognised while they are generated
  (:mod:`app.generation.tool_stream`; the tokenizer's own mlx-lm parser for other formats).
- ``required`` / a named function: decoding is constrained by a JSON schema to exactly one
  call ``{"name": <allowed>, "arguments": <that function's parameters>}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.core import errors
from app.generation.request import FunctionTool, GenerationSpec, Message, ToolCall
from app.generation.tool_stream import TOOL_CALL_END, TOOL_CALL_START, ToolCallStream


@dataclass
class ToolPlan:
    mode: str  # "auto" | "required" | "named"
    tools: list[FunctionTool]
    names: set[str]


def plan_tools(spec: GenerationSpec) -> ToolPlan | None:
    """What the request asks of tools; 400 for contradictions. None: no tools in play."""
    choice, names_of = spec.tool_choice, spec.names
    if not spec.tools:
        if choice not in (None, "none") or spec.tool_name is not None:
            raise errors.invalid_request(
                f"{names_of.tool_choice} needs a non-empty tools list.",
                param=names_of.tool_choice,
            )
        return None
    names = [tool.name for tool in spec.tools]
    if len(set(names)) != len(names):
        raise errors.invalid_request(
            f"{names_of.tools} contains duplicate function names.", param=names_of.tools
        )
    if choice == "none":
        return None
    if spec.tool_name is not None:
        if spec.tool_name not in names:
            raise errors.invalid_request(
                f"{names_of.tool_choice} names {spec.tool_name!r}, which is not in "
                f"{names_of.tools}.",
                param=names_of.tool_choice,
            )
        allowed = [t for t in spec.tools if t.name == spec.tool_name]
        return ToolPlan("named", allowed, {spec.tool_name})
    return ToolPlan(choice or "auto", list(spec.tools), set(names))


def _closed(parameters: dict[str, Any]) -> dict[str, Any]:
    """Arguments get no keys beyond the declared ones unless the schema says otherwise
    (as OpenAI's strict mode); without this small models keep inventing keys."""
    schema = dict(parameters or {"type": "object"})
    if schema.get("type") == "object" and "properties" in schema:
        schema.setdefault("additionalProperties", False)
    return schema


def call_schema(plan: ToolPlan) -> dict[str, Any]:
    """JSON schema of one call to one of the plan's functions."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.name},
                "arguments": _closed(tool.parameters),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in plan.tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def template_supports_tools(chat_template: str | None) -> bool:
    return bool(chat_template) and "tools" in chat_template


def fallback_system_prompt(tools: list[FunctionTool]) -> str:
    described = json.dumps([t.template_entry()["function"] for t in tools])
    return (
        "You can call these functions:\n"
        f"{described}\n"
        "To call one, reply with exactly "
        f'{TOOL_CALL_START}{{"name": <function name>, "arguments": <JSON object>}}'
        f"{TOOL_CALL_END} and nothing else. Otherwise answer normally."
    )


def template_message(message: Message) -> dict[str, Any]:
    """A conversation turn as the chat template sees it (tool calls and results included)."""
    entry: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        entry["name"] = message.name
    if message.tool_calls:
        entry["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _loads(call.arguments)},
            }
            for call in message.tool_calls
        ]
        if not entry["content"]:  # templates without tool support still show the call
            entry["content"] = "".join(
                TOOL_CALL_START
                + json.dumps({"name": c.name, "arguments": _loads(c.arguments)})
                + TOOL_CALL_END
                for c in message.tool_calls
            )
    if message.tool_call_id:
        entry["tool_call_id"] = message.tool_call_id
    return entry


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_calls(text: str, plan: ToolPlan, tokenizer: Any) -> list[ToolCall] | None:
    """Tool calls in a finished output, or None when it is an ordinary answer."""
    stream = ToolCallStream(0, plan.mode, plan.names, tokenizer,
                            [tool.template_entry() for tool in plan.tools])
    stream.feed(text)
    stream.finish("stop")
    return stream.calls or None
