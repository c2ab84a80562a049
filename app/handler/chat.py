"""Chat completions: OpenAI semantics on top of the engine (DESIGN.md section 1)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from app.config import Settings
from app.core import errors
from app.core.context import RequestContext
from app.engine.lm.types import Failed, Finished, PrefillProgress, TextDelta
from app.handler.generation import (
    KEEP_ALIVE,
    Submission,
    check_common_limits,
    failure_error,
    merged_events,
    resolve_max_tokens,
    sampling_params,
    submit,
    usage,
)
from app.handler.logprobs import TokenTexts
from app.handler.structured import compile_schema, schema_for
from app.handler.tools import (
    ToolPlan,
    call_schema,
    fallback_system_prompt,
    history_message,
    parse_calls,
    plan_tools,
    template_supports_tools,
)
from app.lifecycle.manager import ManagedModel, ModelManager
from app.schemas.openai import ChatCompletionRequest


def _reject_unsupported(body: ChatCompletionRequest) -> None:
    """Parameters we parse but cannot honour yet are refused, never silently ignored."""
    if body.top_logprobs is not None and not body.logprobs:
        raise errors.invalid_request(
            "top_logprobs requires logprobs to be true.", param="top_logprobs"
        )
    if body.tools and body.response_format and body.response_format.type != "text":
        if body.tool_choice not in (None, "none", "auto"):
            raise errors.invalid_request(
                "A forced tool_choice cannot be combined with a JSON response_format.",
                param="tool_choice",
            )


def _render_prompt(
    managed: ManagedModel, body: ChatCompletionRequest, plan: ToolPlan | None
) -> list[int]:
    tokenizer = managed.loaded.tokenizer
    messages = [history_message(message) for message in body.messages]
    kwargs: dict[str, Any] = {}
    if plan is not None:
        template = managed.loaded.chat_template or getattr(tokenizer, "chat_template", None)
        if template_supports_tools(template):
            kwargs["tools"] = [t.model_dump(exclude_none=True) for t in plan.tools]
        else:
            note = fallback_system_prompt(plan.tools)
            if messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + note}
            else:
                messages.insert(0, {"role": "system", "content": note})
    try:
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **kwargs
        )
    except Exception as exc:  # noqa: BLE001 - a template refusing the messages is a 400
        raise errors.invalid_request(
            f"The chat template could not render these messages: {exc}", param="messages"
        ) from exc
    return tokenizer.encode(text, add_special_tokens=False)


class ChatHandler:
    def __init__(self, manager: ModelManager, settings: Settings) -> None:
        self.manager = manager
        self.settings = settings

    async def prepare(self, body: ChatCompletionRequest, ctx: RequestContext) -> Submission:
        """Validate, render, tokenize and queue; raises APIError before any byte is sent."""
        ctx.apply_body_metadata(body.metadata)
        ctx.model = body.model
        if len(body.messages) > self.settings.max_messages:
            raise errors.invalid_request(
                f"messages has {len(body.messages)} entries; at most "
                f"{self.settings.max_messages} are allowed.",
                param="messages",
            )
        check_common_limits(body, self.settings)
        _reject_unsupported(body)
        plan = plan_tools(body)
        managed = await self.manager.acquire(body.model, "chat")
        try:
            submission = await self._submit(body, ctx, managed, plan)
        except BaseException:
            self.manager.release(managed)
            raise
        submission.release = lambda: self.manager.release(managed)
        return submission

    async def _submit(
        self,
        body: ChatCompletionRequest,
        ctx: RequestContext,
        managed: ManagedModel,
        plan: ToolPlan | None,
    ) -> Submission:
        ctx.model = managed.spec.id
        loop = asyncio.get_running_loop()
        prompt = await loop.run_in_executor(None, _render_prompt, managed, body, plan)
        requested = body.max_completion_tokens or body.max_tokens
        max_tokens = resolve_max_tokens(requested, len(prompt), managed, self.settings)
        vocab = managed.loaded.tokenizer_vocab_size
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        params = sampling_params(body, max_tokens, vocab, logprobs)
        schema = schema_for(body.response_format) if body.response_format else None
        if schema is not None:
            grammar = await loop.run_in_executor(
                None, compile_schema, managed, schema, "response_format"
            )
            params = replace(params, grammar=grammar)
        if plan is not None:  # also validates every tool's parameter schema
            grammar = await loop.run_in_executor(
                None, compile_schema, managed, call_schema(plan), "tools"
            )
            if plan.mode in ("required", "named"):
                params = replace(params, grammar=grammar)
        submission = submit(managed, prompt, params, body.n, ctx.request_id)
        submission.tool_plan = plan
        return submission

    async def complete(self, submission: Submission, ctx: RequestContext) -> dict[str, Any]:
        n = len(submission.requests)
        texts = [""] * n
        reasons: list[str | None] = [None] * n
        token_logprobs: list[list] = [[] for _ in range(n)]
        prompt_tokens = completion_tokens = cached = 0
        try:
            async for item in merged_events(submission):
                ctx.timer.observe(item, submission)  # metrics + request log
                event = item.event
                if isinstance(event, TextDelta):
                    texts[item.index] += event.text
                    token_logprobs[item.index] += event.logprobs or []
                elif isinstance(event, Finished):
                    reasons[item.index] = event.finish_reason
                    prompt_tokens, cached = event.prompt_tokens, event.cached_tokens
                    completion_tokens += event.completion_tokens
                    token_logprobs[item.index] += event.logprobs or []
                elif isinstance(event, Failed):
                    raise failure_error(event)
        finally:
            submission.close()
        want_logprobs = submission.requests[0].params.logprobs is not None
        texts_of = TokenTexts(submission.managed.loaded.tokenizer) if want_logprobs else None
        messages: list[dict[str, Any]] = []
        for i in range(n):
            message, reasons[i] = self._message(submission, texts[i], reasons[i])
            messages.append(message)
        return {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": ctx.model,
            "choices": [
                {
                    "index": i,
                    "message": messages[i],
                    "logprobs": (
                        {"content": texts_of.chat_content(token_logprobs[i]), "refusal": None}
                        if texts_of
                        else None
                    ),
                    "finish_reason": reasons[i],
                }
                for i in range(n)
            ],
            "usage": usage(prompt_tokens, completion_tokens, cached),
            "htdi": ctx.htdi(),
        }

    @staticmethod
    def _message(
        submission: Submission, text: str, reason: str | None
    ) -> tuple[dict[str, Any], str | None]:
        """The assistant message for one choice: tool calls when the output holds them."""
        plan = submission.tool_plan
        if plan is not None and reason == "stop":
            calls = parse_calls(text, plan, submission.managed.loaded.tokenizer)
            if calls:
                return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
        return {"role": "assistant", "content": text}, reason

    async def stream(
        self, submission: Submission, ctx: RequestContext, include_usage: bool
    ) -> AsyncIterator[Any]:
        """Yield chunk dicts (or KEEP_ALIVE); the API layer frames them as SSE."""
        n = len(submission.requests)
        base = {
            "id": _completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": ctx.model,
        }

        texts_of = (
            TokenTexts(submission.managed.loaded.tokenizer)
            if submission.requests[0].params.logprobs is not None
            else None
        )

        def chunk(
            index: int, delta: dict[str, Any], finish: str | None = None, logprobs=None
        ) -> dict:
            lp = None
            if texts_of is not None and logprobs:
                lp = {"content": texts_of.chat_content(logprobs), "refusal": None}
            choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
            out = {**base, "choices": [choice]}
            if include_usage:
                out["usage"] = None
            return out

        ended = 0
        prompt_tokens = completion_tokens = cached = 0
        held = [""] * n  # with tools in play, text is held until it is known not to be a call
        hold = submission.tool_plan is not None
        try:
            for i in range(n):
                yield chunk(i, {"role": "assistant", "content": ""})
            async for item in merged_events(submission):
                ctx.timer.observe(item, submission)  # metrics + request log
                event = item.event
                if isinstance(event, TextDelta) and hold:
                    held[item.index] += event.text
                elif isinstance(event, TextDelta):
                    yield chunk(item.index, {"content": event.text}, logprobs=event.logprobs)
                elif isinstance(event, PrefillProgress):
                    yield KEEP_ALIVE
                elif isinstance(event, Failed):
                    yield failure_error(event)
                    return
                elif isinstance(event, Finished):
                    ended += 1
                    prompt_tokens, cached = event.prompt_tokens, event.cached_tokens
                    completion_tokens += event.completion_tokens
                    reason = event.finish_reason
                    if hold:
                        message, reason = self._message(submission, held[item.index], reason)
                        yield chunk(item.index, _tool_delta(message))
                    final = chunk(item.index, {}, reason, event.logprobs)
                    if ended == n and not include_usage:
                        final["htdi"] = ctx.htdi()
                    yield final
            if include_usage:
                yield {
                    **base,
                    "choices": [],
                    "usage": usage(prompt_tokens, completion_tokens, cached),
                    "htdi": ctx.htdi(),
                }
        finally:
            submission.close()


def _tool_delta(message: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's streamed form of a finished message: content, or indexed tool calls."""
    if not message.get("tool_calls"):
        return {"content": message["content"]}
    return {"tool_calls": [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]}


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
