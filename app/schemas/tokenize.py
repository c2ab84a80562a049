"""vLLM-style /tokenize and /detokenize shapes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from app.schemas.common import StrictRequest, null_means_default
from app.schemas.openai import ChatMessage


class TokenizeRequest(StrictRequest):
    model: str = Field(min_length=1, max_length=512)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    _nulls = null_means_default("add_special_tokens", "add_generation_prompt",
                                "return_token_strs")

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None
    htdi: dict[str, Any]


class DetokenizeRequest(StrictRequest):
    model: str = Field(min_length=1, max_length=512)
    tokens: list[int] = Field(max_length=1_000_000)


class DetokenizeResponse(BaseModel):
    prompt: str
    htdi: dict[str, Any]
