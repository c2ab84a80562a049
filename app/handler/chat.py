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
    ReasoningOut,
    TextOut,
    ToolCallDelta,
    ToolCallStart,
)
from app.generation.request import (
    FunctionTool,
    GenerationSpec,
    Message,
    PromptOptions,
    ToolCall,
)
from app.handler.logprobs import TokenTexts
from app.handler.openai_common import (
    StreamEnding,
    openai_call,
    sampling_of,
    schema_for,
    system_fingerprint,
    usage_dict,
)
from app.schemas.openai import ChatCompletionRequest, ChatMessage, NamedToolChoice
from app.schemas.template import TemplateOptions

ROLES = {"developer": "system", "function": "tool"}  # OpenAI's aliases and legacy roles


def _message(message: ChatMessage) -> Message:
    calls = [ToolCall(call.id, call.function.name, call.function.arguments)
             for call in message.tool_calls or []]
    if message.function_call is not None:  # the deprecated single-call form
        legacy = message.function_call
        calls.append(ToolCall(f"call_{legacy.name}", legacy.name, legacy.arguments))
    tool_call_id = message.tool_call_id
    if message.role == "function" and tool_call_id is None and message.name:
        tool_call_id = f"call_{message.name}"
    return Message(
        role=ROLES.get(message.role, message.role),
        content=message.text() or (message.refusal or ""),
        name=message.name,
        tool_calls=calls,
        tool_call_id=tool_call_id,
    )


def _refuse_what_cannot_be_honoured(body: ChatCompletionRequest) -> None:
    """Fields OpenAI documents that would change the answer if silently ignored."""
    if body.modalities and "audio" in body.modalities:
        raise errors.invalid_request(
            "modalities 'audio' is not supported: the models here answer in text only.",
            param="modalities")
    if body.web_search_options is not None:
        raise errors.invalid_request(
            "web_search_options is not supported: this server cannot search the web.",
            param="web_search_options")
    if body.functions and body.tools:
        raise errors.invalid_request(
            "functions is the deprecated form of tools; send one of them.", param="functions")


def _tools(body: ChatCompletionRequest) -> list[FunctionTool]:
    """``tools``, or the deprecated ``functions`` taken as tools."""
    specs = [t.function for t in body.tools or []] + list(body.functions or [])
    return [FunctionTool(f.name, f.description, f.parameters, f.strict) for f in specs]


def chat_spec(body: ChatCompletionRequest) -> GenerationSpec:
    """The neutral request behind an OpenAI chat request."""
    _refuse_what_cannot_be_honoured(body)
    choice = body.tool_choice
    if body.functions and choice is None and body.function_call is not None:
        legacy = body.function_call
        choice = legacy if isinstance(legacy, str) else NamedToolChoice(
            type="function", function=legacy)
    return GenerationSpec(
        model=body.model,
        capability="chat",
        sampling=sampling_of(body),
        n=body.n or 1,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        messages=[_message(m) for m in body.messages],
        tools=_tools(body),
        tool_choice=None if isinstance(choice, NamedToolChoice) else choice,
        tool_name=choice.function.name if isinstance(choice, NamedToolChoice) else None,
        output_schema=schema_for(body.response_format),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        prompt_options=prompt_options_of(body),
        reasoning_effort=body.reasoning_effort,
        cache_salt=body.cache_salt,
    )


def prompt_options_of(body: TemplateOptions) -> PromptOptions:
    """vLLM's defaults: a new assistant turn unless the final message is continued."""
    go_on = bool(body.continue_final_message)
    return PromptOptions(
        add_generation_prompt=(
            not go_on if body.add_generation_prompt is None else body.add_generation_prompt
        ),
        continue_final_message=go_on,
        template_kwargs=dict(body.chat_template_kwargs or {}),
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

    async def input_tokens(
        self, body: ChatCompletionRequest, ctx: RequestContext
    ) -> dict[str, Any]:
        """The prompt this chat request renders to and its token count (nothing generated)."""
        ctx.apply_body_metadata(body.metadata)
        rendered = await self.core.render(chat_spec(body), ctx)
        return {
            "object": "chat.completion.input_tokens",
            "model": ctx.model,
            "input_tokens": len(rendered.tokens[0]),
            "max_model_len": rendered.context_length,
            "prompt": rendered.texts[0],
            "tokens": rendered.tokens[0],
            "htdi": ctx.htdi(),
        }

    async def complete(self, run: Run, ctx: RequestContext) -> dict[str, Any]:
        result = await run.collect()
        forced = run.tool_plan is not None and run.tool_plan.mode != "auto"
        texts_of = TokenTexts(run.tokenizer) if run.spec.logprobs is not None else None
        return {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": ctx.model,
            "system_fingerprint": system_fingerprint(run.managed),
            "choices": [
                {
                    "index": i,
                    "message": _assistant_message(result.texts[i], result.calls[i], forced,
                                                  result.reasoning[i]),
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
            "system_fingerprint": system_fingerprint(run.managed),
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
                elif isinstance(event, ReasoningOut):
                    delta = {"reasoning_content": event.text, "reasoning": event.text}
                    yield ending.chunk(choice(event.choice, delta))
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


def _assistant_message(text: str, calls: list[ToolCall] | None, forced: bool,
                       reasoning: str | None) -> dict[str, Any]:
    """The answer; with tool calls (or a forced call cut short), any text said before them,
    or null. A model's thinking goes under both names clients read
    (``reasoning_content``: vLLM, DeepSeek; ``reasoning``: OpenRouter, newer vLLM)."""
    if calls:
        message = {"role": "assistant", "content": text.strip() or None,
                   "tool_calls": [openai_call(call) for call in calls]}
    else:
        message = {"role": "assistant", "content": None if forced else text}
    if reasoning is not None:
        message["reasoning_content"] = message["reasoning"] = reasoning
    return message


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
