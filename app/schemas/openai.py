"""Request and response shapes of the OpenAI API (chat completions, models).

Requests forbid unknown fields, as OpenAI does ("Unrecognized request argument"), so a
caller never believes a parameter was honoured when it was not.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from app.core.errors import invalid_request
from app.schemas.common import StrictRequest as _Strict
from app.schemas.common import chunked_prompt, null_means_default
from app.schemas.template import TemplateOptions

INT64 = 2**63
MIN_TEMPERATURE = 0.01  # above 0: 1/temperature overflows for tiny values (vLLM's floor)
MIN_REPETITION_PENALTY = 0.01
_TOKEN_ID = re.compile(r"[0-9]{1,10}")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str = Field(min_length=1, max_length=128)
    arguments: str


class ToolCall(_Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCall] | None = Field(None, max_length=64)
    tool_call_id: str | None = Field(None, max_length=256)
    # What stored OpenAI histories carry on assistant turns: a refusal's text, an audio
    # answer's reference (only null can be replayed here), a deprecated function_call.
    refusal: str | None = None
    audio: None = None
    function_call: FunctionCall | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None


class ToolSpec(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: bool = False

    _nulls = null_means_default("include_usage")


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class SamplingFields(_Strict):
    """Controls shared by chat and legacy completions."""

    model: str = Field(min_length=1, max_length=512)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)  # OpenAI's int64
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(None, max_length=512)
    metadata: dict[str, Any] | None = None
    # Common extensions (vLLM / mlx-lm names)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, ge=MIN_REPETITION_PENALTY, le=10.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = Field(None, max_length=64)
    speculative: bool = True  # prompt-lookup speculative decoding where it applies
    cache_salt: str | None = Field(None, min_length=1, max_length=256)  # vLLM: own prefix cache

    _nulls = null_means_default("n", "stream", "ignore_eos", "min_tokens", "speculative")

    @field_validator("temperature")
    @classmethod
    def _temperature_floor(cls, value: float | None) -> float | None:
        if value is not None and 0.0 < value < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise invalid_request(
                "stream_options is only allowed when stream is true.", param="stream_options"
            )
        return self

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if any(not s for s in items):
            raise ValueError("stop sequences must be non-empty strings")
        return items

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        if len(value) > 300:
            raise ValueError("at most 300 logit_bias entries are allowed")
        for key, bias in value.items():
            if not _TOKEN_ID.fullmatch(key):
                raise ValueError(f"logit_bias keys must be token ids (0-9, at most 10 digits), "
                                 f"got {key[:20]!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias values must be within [-100, 100], got {bias}")
        return value


class ChatCompletionRequest(SamplingFields, TemplateOptions):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[ToolSpec] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None  # accepted; chat completions are not stored here
    # Fields OpenAI documents (docs/PHASE4_TIER3A_CONTRACT.md says what each does here)
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    prediction: dict[str, Any] | None = None
    prompt_cache_key: str | None = Field(None, max_length=1024)
    safety_identifier: str | None = Field(None, max_length=512)
    web_search_options: dict[str, Any] | None = None
    functions: list[FunctionSpec] | None = Field(None, max_length=128)  # deprecated: tools
    function_call: Literal["none", "auto"] | NamedFunction | None = None  # ... tool_choice
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None


# ---- responses ---------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    htdi: dict[str, Any]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mlx-openai-server-lab"
    metadata: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CompletionRequest(SamplingFields):
    """Legacy ``/v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0 (with echo): score the prompt only
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    _completion_nulls = null_means_default("echo")
    _prompt_chunks = chunked_prompt("prompt")


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None
    htdi: dict[str, Any]
