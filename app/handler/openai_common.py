"""What the OpenAI dialects (chat, legacy completions) share: request fields → the neutral
spec's pieces, and the neutral results → OpenAI's usage, tool-call and stream shapes."""

from __future__ import annotations

from typing import Any

from app.core import errors
from app.core.context import RequestContext
from app.generation.events import KEEP_ALIVE, Usage
from app.generation.request import Sampling, ToolCall
from app.schemas.openai import ResponseFormat, SamplingFields


def sampling_of(body: SamplingFields) -> Sampling:
    """The decoding controls of an OpenAI request body."""
    return Sampling(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        seed=body.seed,
        stop=tuple(body.stop or ()),
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=body.logit_bias,
        ignore_eos=bool(body.ignore_eos),
        min_tokens=body.min_tokens or 0,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        speculative=body.speculative is not False,
    )


def schema_for(response_format: ResponseFormat | None) -> dict[str, Any] | bool | None:
    """The JSON schema ``response_format`` asks the output to follow; None for plain text."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "object"}
    spec = response_format.json_schema
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise errors.invalid_request(
            "response_format.json_schema needs a 'name' and a 'schema'.",
            param="response_format.json_schema",
        )
    schema = spec.get("schema", {})
    if not isinstance(schema, dict | bool):
        raise errors.invalid_request(
            "response_format.json_schema.schema must be a JSON schema object.",
            param="response_format.json_schema.schema",
        )
    return schema


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def openai_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": f"call_{call.id}",
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


class StreamEnding:
    """Where an OpenAI stream's closing data goes: the ``htdi`` object rides on the last
    choice's final chunk, or, with ``stream_options.include_usage``, on a last chunk that
    carries the usage and no choices."""

    def __init__(self, base: dict[str, Any], choices: int, include_usage: bool) -> None:
        self.base = base
        self.choices = choices
        self.include_usage = include_usage
        self.ended = 0

    def chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        out = {**self.base, "choices": [choice]}
        if self.include_usage:
            out["usage"] = None
        return out

    def final(self, choice: dict[str, Any], ctx: RequestContext) -> dict[str, Any]:
        """A choice's last chunk (the one with its ``finish_reason``)."""
        self.ended += 1
        out = self.chunk(choice)
        if self.ended == self.choices and not self.include_usage:
            out["htdi"] = ctx.htdi()
        return out

    def usage(self, usage: Usage, ctx: RequestContext) -> dict[str, Any] | None:
        """The usage chunk, when the client asked for one."""
        if not self.include_usage:
            return None
        return {**self.base, "choices": [], "usage": usage_dict(usage), "htdi": ctx.htdi()}

    def passthrough(self, event: Any, ctx: RequestContext) -> list[Any]:
        """What the stream sends for the events every OpenAI dialect treats alike: the usage
        chunk (if asked for) and keep-alives."""
        if isinstance(event, Usage):
            last = self.usage(event, ctx)
            return [] if last is None else [last]
        return [KEEP_ALIVE] if event is KEEP_ALIVE else []
