"""Chat completions: the OpenAI chat dialect over the neutral generation core."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from app.core import errors
from app.core.context import RequestContext
from app.generation.core import GenerationCore, Run
from app.generation.events import (
    ChoiceEnd,
    TextOut,
    ToolCallDelta,
    ToolCallStart,
)
from app.generation.request import FunctionTool, GenerationSpec, Message, ToolCall
from app.handler.logprobs import TokenTexts
from app.handler.openai_common import (
    StreamEnding,
    openai_call,
    sampling_of,
    schema_for,
    usage_dict,
)
from app.schemas.openai import ChatCompletionRequest, ChatMessage, NamedToolChoice


def _message(message: ChatMessage) -> Message:
    return Message(
        role="system" if message.role == "developer" else message.role,
        content=message.text(),
        name=message.name,
        tool_calls=[
            ToolCall(call.id, call.function.name, call.function.arguments)
            for call in message.tool_calls or []
        ],
        tool_call_id=message.tool_call_id,
    )


def chat_spec(body: ChatCompletionRequest) -> GenerationSpec:
    """The neutral request behind an OpenAI chat request."""
    choice = body.tool_choice
    return GenerationSpec(
        model=body.model,
        capability="chat",
        sampling=sampling_of(body),
        n=body.n or 1,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        messages=[_message(m) for m in body.messages],
        tools=[
            FunctionTool(
                t.function.name, t.function.description, t.function.parameters, t.function.strict
            )
            for t in body.tools or []
        ],
        tool_choice=None if isinstance(choice, NamedToolChoice) else choice,
        tool_name=choice.function.name if isinstance(choice, NamedToolChoice) else None,
        output_schema=schema_for(body.response_format),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        cache_salt=body.cache_salt,
    )


class ChatHandler:
    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    async def prepare(self, body: ChatCompletionRequest, ctx: RequestContext) -> Run:
        """Validate, render, tokenize and queue; raises APIError before any byte is sent."""
        ctx.apply_body_metadata(body.metadata)
        ctx.model = body.model
        if body.top_logprobs is not None and not body.logprobs:
            raise errors.invalid_request(
                "top_logprobs requires logprobs to be true.", param="top_logprobs"
            )
        return await self.core.start(chat_spec(body), ctx)

    async def complete(self, run: Run, ctx: RequestContext) -> dict[str, Any]:
        result = await run.collect()
        forced = run.tool_plan is not None and run.tool_plan.mode != "auto"
        texts_of = TokenTexts(run.tokenizer) if run.spec.logprobs is not None else None
        return {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": ctx.model,
            "choices": [
                {
                    "index": i,
                    "message": _assistant_message(result.texts[i], result.calls[i], forced),
                    "logprobs": (
                        {"content": texts_of.chat_content(result.logprobs[i]), "refusal": None}
                        if texts_of
                        else None
                    ),
                    "finish_reason": result.finish_reasons[i],
                }
                for i in range(run.choices)
            ],
            "usage": usage_dict(result.usage),
            "htdi": ctx.htdi(),
        }

    async def stream(
        self, run: Run, ctx: RequestContext, include_usage: bool
    ) -> AsyncIterator[Any]:
        """Yield chunk dicts (or KEEP_ALIVE); the API layer frames them as SSE."""
        base = {
            "id": _completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": ctx.model,
        }
        ending = StreamEnding(base, run.choices, include_usage)
        texts_of = TokenTexts(run.tokenizer) if run.spec.logprobs is not None else None

        def choice(index: int, delta: dict[str, Any], finish: str | None = None, logprobs=None):
            lp = None
            if texts_of is not None and logprobs:
                lp = {"content": texts_of.chat_content(logprobs), "refusal": None}
            return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}

        try:
            for i in range(run.choices):
                yield ending.chunk(choice(i, {"role": "assistant", "content": ""}))
            async for event in run.events():
                if isinstance(event, TextOut):
                    delta = {"content": event.text}
                    yield ending.chunk(choice(event.choice, delta, logprobs=event.logprobs))
                elif isinstance(event, ToolCallStart):
                    call = openai_call(ToolCall(event.id, event.name, ""))
                    delta = {"tool_calls": [{"index": event.index, **call}]}
                    yield ending.chunk(choice(event.choice, delta))
                elif isinstance(event, ToolCallDelta):
                    delta = {"tool_calls": [
                        {"index": event.index, "function": {"arguments": event.arguments}}
                    ]}
                    yield ending.chunk(choice(event.choice, delta))
                elif isinstance(event, ChoiceEnd):
                    final = choice(event.choice, {}, event.finish_reason, event.logprobs)
                    yield ending.final(final, ctx)
                else:
                    for item in ending.passthrough(event, ctx):
                        yield item
        finally:
            run.close()


def _assistant_message(text: str, calls: list[ToolCall] | None, forced: bool) -> dict[str, Any]:
    """The answer; with tool calls (or a forced call cut short), any text said before them,
    or null."""
    if calls:
        return {"role": "assistant", "content": text.strip() or None,
                "tool_calls": [openai_call(call) for call in calls]}
    return {"role": "assistant", "content": None if forced else text}


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
