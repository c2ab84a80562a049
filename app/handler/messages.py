"""Anthropic Messages: the Anthropic dialect over the neutral generation core.

A request becomes a :class:`~app.generation.request.GenerationSpec` (system prompt, turns
with tool uses and results, tools, tool choice, sampling); the run's results become a
``message`` object (:meth:`MessagesHandler.complete`) or Anthropic's event stream
(:mod:`app.handler.messages_stream`). Decisions a client may notice:

- ``model``: a registry id or alias, else the first ``model_map`` entry it matches.
- ``thinking``: models that think are not served yet; ``enabled`` / ``adaptive`` are
  accepted and answered without thinking blocks (Claude Code asks for them by default).
- Claude Code's attribution line (``x-anthropic-billing-header: …; cch=…;``) changes per
  request; it is dropped from the system prompt so the prefix cache still hits.
- ``usage.input_tokens`` counts the prompt tokens not read from the prefix cache, as
  Anthropic counts them; ``cache_read_input_tokens`` the ones that were.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from app.core import errors
from app.core.context import RequestContext
from app.generation.core import GenerationCore, Run
from app.generation.events import Usage
from app.generation.request import (
    FieldNames,
    FunctionTool,
    GenerationSpec,
    Message,
    Sampling,
    ToolCall,
)
from app.schemas.anthropic import (
    AnthropicMessage,
    CountTokensRequest,
    MessagesInput,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
)

NAMES = FieldNames(
    prompt="messages",
    max_tokens="max_tokens",
    tools="tools",
    tool_choice="tool_choice",
    output_format="output_config.format",
    stop="stop_sequences",
)
ATTRIBUTION_PREFIX = "x-anthropic-billing-header:"
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def without_attribution(text: str) -> str:
    """``text`` without Claude Code's leading attribution line (claude-code #68900)."""
    if text.startswith(ATTRIBUTION_PREFIX):
        return text.partition("\n")[2]
    return text


def system_prompt(system: str | list[TextBlock] | None) -> str:
    texts = [system] if isinstance(system, str) else [block.text for block in system or []]
    return "\n\n".join(t for t in (without_attribution(t) for t in texts) if t)


def _refused(block: Any, param: str) -> errors.APIError:
    kind = block.type
    why = (
        "the models served here read text only"
        if kind in ("image", "document")
        else "it does not belong in this role"
    )
    return errors.invalid_request(f"A {kind!r} block is not supported here: {why}.", param=param)


def _tool_result_text(block: ToolResultBlock, param: str) -> str:
    if isinstance(block.content, str):
        text = block.content
    else:
        parts = []
        for part in block.content:
            if not isinstance(part, TextBlock):
                raise _refused(part, param)
            parts.append(part.text)
        text = "\n\n".join(parts)
    return f"Error: {text}" if block.is_error else text


def _assistant_turn(message: AnthropicMessage, param: str) -> list[Message]:
    text, calls = [], []
    for block in message.content:
        if isinstance(block, TextBlock):
            text.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(ToolCall(block.id, block.name, json.dumps(block.input)))
        elif not isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            raise _refused(block, param)
    return [Message("assistant", "".join(text), tool_calls=calls)]


def _user_turn(message: AnthropicMessage, param: str) -> list[Message]:
    """Tool results become ``tool`` turns, in order; the text around them ``user`` turns."""
    out: list[Message] = []
    text: list[str] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            text.append(block.text)
        elif isinstance(block, ToolResultBlock):
            if text:
                out.append(Message("user", "\n\n".join(text)))
                text = []
            out.append(Message("tool", _tool_result_text(block, param),
                               tool_call_id=block.tool_use_id))
        else:
            raise _refused(block, param)
    if text or not out:
        out.append(Message("user", "\n\n".join(text)))
    return out


def conversation(body: MessagesInput) -> list[Message]:
    """The neutral conversation: the system prompt, then every turn."""
    out = []
    system = system_prompt(body.system)
    if system:
        out.append(Message("system", system))
    for i, message in enumerate(body.messages):
        param = f"messages[{i}].content"
        if isinstance(message.content, str):
            out.append(Message(message.role, message.content))
        elif message.role == "assistant":
            out += _assistant_turn(message, param)
        else:
            out += _user_turn(message, param)
    if body.messages[-1].role != "user":
        raise errors.invalid_request(
            "The last message must have the user role (continuing a prefilled assistant "
            "turn is not supported).",
            param=f"messages[{len(body.messages) - 1}].role",
        )
    return out


def messages_spec(body: MessagesInput, model: str) -> GenerationSpec:
    """The neutral request behind a Messages (or count_tokens) body; ``model`` is resolved."""
    choice = body.tool_choice
    mode = (
        "required" if isinstance(choice, ToolChoiceAny)
        else "none" if isinstance(choice, ToolChoiceNone)
        else "auto" if choice is not None and not isinstance(choice, ToolChoiceTool)
        else None
    )
    spec = GenerationSpec(
        model=model,
        capability="chat",
        messages=conversation(body),
        tools=[FunctionTool(t.name, t.description, t.input_schema, t.strict)
               for t in body.tools or []],
        tool_choice=mode,
        tool_name=choice.name if isinstance(choice, ToolChoiceTool) else None,
        output_schema=(
            body.output_config.format.schema_
            if body.output_config and body.output_config.format
            else None
        ),
        names=NAMES,
    )
    if isinstance(body, MessagesRequest):
        spec.max_tokens = body.max_tokens
        spec.sampling = Sampling(
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            stop=tuple(body.stop_sequences or ()),
        )
    return spec


def single_call(body: MessagesInput) -> bool:
    """``disable_parallel_tool_use``: at most one tool_use block per answer."""
    return bool(getattr(body.tool_choice, "disable_parallel_tool_use", False))


def stop_reason(finish_reason: str | None, stop_sequence: str | None) -> str:
    if stop_sequence is not None:
        return "stop_sequence"
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def usage_dict(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage: input tokens not read from the cache, and those that were.
    Nothing is charged for writing the prefix cache, so cache creation is always 0."""
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def tool_use_id(call_id: str) -> str:
    return call_id if call_id.startswith("toolu_") else f"toolu_{call_id}"


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the ``input`` object (a non-object value is wrapped)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        value = arguments
    return value if isinstance(value, dict) else {"input": value}


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


class MessagesHandler:
    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    def _spec(self, body: MessagesInput, ctx: RequestContext) -> GenerationSpec:
        ctx.model = body.model
        model = self.core.manager.registry.resolve(body.model, self.core.settings.model_map)
        if isinstance(body, MessagesRequest) and body.metadata is not None:
            ctx.apply_body_metadata(body.metadata.model_dump(exclude_none=True))
        return messages_spec(body, model)

    async def prepare(self, body: MessagesRequest, ctx: RequestContext) -> Run:
        """Validate, render, tokenize and queue; raises APIError before any byte is sent."""
        return await self.core.start(self._spec(body, ctx), ctx)

    async def count_tokens(self, body: CountTokensRequest, ctx: RequestContext) -> dict[str, Any]:
        spec = self._spec(body, ctx)
        return {"input_tokens": await self.core.count_prompt_tokens(spec, ctx),
                "htdi": ctx.htdi()}

    async def complete(self, run: Run, body: MessagesRequest, ctx: RequestContext) -> dict:
        result = await run.collect()
        calls = result.calls[0] or []
        if single_call(body):
            calls = calls[:1]
        forced = run.tool_plan is not None and run.tool_plan.mode != "auto"
        text = result.texts[0].strip() if calls else result.texts[0]
        content: list[dict[str, Any]] = []
        if text and not (forced and not calls):
            content.append({"type": "text", "text": text})
        content += [
            {"type": "tool_use", "id": tool_use_id(call.id), "name": call.name,
             "input": tool_input(call.arguments)}
            for call in calls
        ]
        return {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": body.model,
            "content": content,
            "stop_reason": stop_reason(result.finish_reasons[0], result.stop_sequences[0]),
            "stop_sequence": result.stop_sequences[0],
            "usage": usage_dict(result.usage),
            "htdi": ctx.htdi(),
        }
