"""Request shape of OpenAI's Responses API (``POST /v1/responses`` and its siblings).

Top-level fields OpenAI documents are all accepted (unknown ones are a 400, as OpenAI
answers); whether each is honoured, ignored or refused is decided in
:mod:`app.handler.responses` and listed in the contract doc. Input items are kept as
plain objects here and checked item by item there, so an error can name ``input[3]``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import StrictRequest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionToolChoice(_Strict):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)


class AllowedTools(_Strict):
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]] = Field(min_length=1, max_length=128)


class HostedToolChoice(_Strict):
    """A built-in tool type forced by name (we serve none: refused with its name)."""

    type: str


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=64)
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(_Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None
    context: Literal["auto", "current_turn", "all_turns"] | None = None
    mode: str | None = None


class StreamOptions(_Strict):
    include_obfuscation: bool | None = None


class ResponsesRequest(StrictRequest):
    """``POST /v1/responses`` (and ``/v1/responses/input_tokens``, which ignores the
    generation controls)."""

    model: str = Field(min_length=1, max_length=512)
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: (
        Literal["none", "auto", "required"] | FunctionToolChoice | AllowedTools
        | HostedToolChoice | None
    ) = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = Field(None, ge=1)
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=512)
    store: bool | None = None
    previous_response_id: str | None = Field(None, max_length=256)
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = Field(None, max_length=16)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    prompt_cache_key: str | None = Field(None, max_length=1024)
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    safety_identifier: str | None = Field(None, max_length=512)
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    client_metadata: dict[str, Any] | None = None  # sent by Codex CLI; recorded nowhere
    cache_salt: str | None = Field(None, min_length=1, max_length=256)  # vLLM: own prefix cache
    # Sampling extensions shared with our chat route (vLLM / mlx-lm names)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
