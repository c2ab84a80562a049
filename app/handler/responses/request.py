"""A Responses API request → the neutral spec, and the request-derived response fields.

What is honoured, ignored and refused is listed in docs/PHASE4_TIER3A_CONTRACT.md
("Responses"); refusals name the field, as OpenAI's errors do.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from app.core import errors
from app.generation.request import FieldNames, FunctionTool, GenerationSpec, Message, Sampling
from app.schemas.responses import (
    AllowedTools,
    FunctionToolChoice,
    HostedToolChoice,
    ResponsesRequest,
)

log = logging.getLogger(__name__)

NAMES = FieldNames(prompt="input", max_tokens="max_output_tokens", tools="tools",
                   tool_choice="tool_choice", output_format="text.format")
INCLUDABLE = {"message.output_text.logprobs", "reasoning.encrypted_content"}
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


def refuse_unsupported(body: ResponsesRequest) -> None:
    """Fields whose meaning we cannot honour and must not silently ignore: a clear 400."""
    if body.background:
        raise errors.invalid_request(
            "background responses are not supported by this server; omit background.",
            param="background")
    if body.conversation is not None:
        raise errors.invalid_request(
            "conversation objects are not supported by this server; chain turns with "
            "previous_response_id.", param="conversation")
    if body.prompt is not None:
        raise errors.invalid_request(
            "stored prompt templates are not supported by this server; send input and "
            "instructions.", param="prompt")
    for value in body.include or []:
        if value not in INCLUDABLE:
            raise errors.invalid_request(
                f"include value {value!r} is not supported by this server (supported: "
                f"{', '.join(sorted(INCLUDABLE))}).", param="include")
    if isinstance(body.tool_choice, HostedToolChoice):
        raise errors.invalid_request(
            f"tool_choice type {body.tool_choice.type!r} is not supported by this server "
            "(function tools only).", param="tool_choice")
    if body.metadata is not None:
        _check_metadata(body.metadata)


def _check_metadata(metadata: dict[str, Any]) -> None:
    if len(metadata) > 16 or any(
        len(key) > 64 or not isinstance(value, str) or len(value) > 512
        for key, value in metadata.items()
    ):
        raise errors.invalid_request(
            "metadata holds at most 16 string values (keys up to 64, values up to 512 "
            "characters).", param="metadata")


class Tools:
    """The request's tools as the model sees them: function tools, including those inside
    ``namespace`` groups (Codex CLI sends these), and which namespace each came from.
    Built-in tool types (``web_search``, ``file_search``, ...) run at OpenAI, not here:
    they are left out (Codex CLI always sends ``web_search``, so refusing them would stop
    it working) and logged once per type."""

    def __init__(self, tools: list[dict[str, Any]] | None) -> None:
        self.functions: list[FunctionTool] = []
        self.namespace_of: dict[str, str] = {}
        self.echo: list[dict[str, Any]] = []  # what the response object lists
        for index, tool in enumerate(tools or []):
            kind = tool.get("type")
            if kind == "function":
                self.functions.append(_function_tool(tool, f"tools[{index}]"))
                self.echo.append(_echo(self.functions[-1]))
            elif kind == "namespace" and isinstance(tool.get("tools"), list):
                namespace = str(tool.get("name") or "")
                for inner, nested in enumerate(tool["tools"]):
                    if isinstance(nested, dict) and nested.get("type") == "function":
                        function = _function_tool(nested, f"tools[{index}].tools[{inner}]")
                        self.functions.append(function)
                        self.namespace_of[function.name] = namespace
                self.echo.append(tool)
            else:
                _note_ignored(str(kind))


_IGNORED: set[str] = set()


def _note_ignored(kind: str) -> None:
    if kind not in _IGNORED:
        _IGNORED.add(kind)
        log.info("responses: built-in tool type %r is not served here; left out", kind)


def _function_tool(tool: dict[str, Any], where: str) -> FunctionTool:
    name = tool.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.match(name):
        raise errors.invalid_request(
            f"{where}.name must be 1-64 letters, digits, underscores or dashes.", param=where)
    parameters = tool.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise errors.invalid_request(f"{where}.parameters must be a JSON schema object.",
                                     param=where)
    description = tool.get("description")
    return FunctionTool(name, description if isinstance(description, str) else None,
                        parameters, tool.get("strict"))


def _echo(tool: FunctionTool) -> dict[str, Any]:
    return {"type": "function", "name": tool.name, "description": tool.description,
            "parameters": tool.parameters, "strict": tool.strict}


def output_schema(body: ResponsesRequest) -> dict[str, Any] | bool | None:
    fmt = body.text.format if body.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if not fmt.name or fmt.schema_ is None:
        raise errors.invalid_request(
            "text.format of type json_schema needs a 'name' and a 'schema'.",
            param="text.format")
    return fmt.schema_


def generation_spec(body: ResponsesRequest, messages: list[Message]) -> GenerationSpec:
    tools = Tools(body.tools).functions
    choice = body.tool_choice
    tool_choice, tool_name = None, None
    if isinstance(choice, FunctionToolChoice):
        tool_name = choice.name
    elif isinstance(choice, AllowedTools):
        allowed = {t.get("name") for t in choice.tools}
        tools = [t for t in tools if t.name in allowed]
        tool_choice = choice.mode
    elif isinstance(choice, str):
        tool_choice = choice
    logprobs = None
    if body.top_logprobs is not None or "message.output_text.logprobs" in (body.include or []):
        logprobs = body.top_logprobs or 0
    return GenerationSpec(
        model=body.model,
        capability="chat",
        sampling=Sampling(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                          min_p=body.min_p, seed=body.seed,
                          repetition_penalty=body.repetition_penalty),
        max_tokens=body.max_output_tokens,
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        tool_name=tool_name,
        output_schema=output_schema(body),
        logprobs=logprobs,
        names=NAMES,
        cache_salt=body.cache_salt,
    )


def response_base(body: ResponsesRequest, response_id: str, model: str,
                  store: bool) -> dict[str, Any]:
    """The response object's fields that echo the request (OpenAI's defaults filled in)."""
    text = body.text.model_dump(by_alias=True, exclude_none=True) if body.text else {}
    text.setdefault("format", {"type": "text"})
    text.setdefault("verbosity", "medium")
    choice = body.tool_choice
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "prompt_cache_key": body.prompt_cache_key,
        "reasoning": {"effort": body.reasoning.effort if body.reasoning else None,
                      "summary": body.reasoning.summary if body.reasoning else None},
        "safety_identifier": body.safety_identifier,
        "service_tier": body.service_tier or "default",
        "store": store,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "text": text,
        "tool_choice": choice.model_dump() if hasattr(choice, "model_dump") else choice or "auto",
        "tools": Tools(body.tools).echo,
        "top_logprobs": body.top_logprobs or 0,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "truncation": body.truncation or "disabled",
        "usage": None,
        "user": body.user,
    }


def max_calls(body: ResponsesRequest) -> int | None:
    """How many calls the answer may hold: one without parallel calls, max_tool_calls."""
    limits = [n for n in (body.max_tool_calls,
                          1 if body.parallel_tool_calls is False else None) if n]
    return min(limits) if limits else None
