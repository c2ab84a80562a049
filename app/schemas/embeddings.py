"""Request and response shapes of OpenAI's /v1/embeddings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.schemas.common import StrictRequest, chunked_prompt, null_means_default


class EmbeddingRequest(StrictRequest):
    model: str = Field(min_length=1, max_length=512)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=512)
    metadata: dict[str, Any] | None = None
    # Extension (vLLM's name): cut each input to its last N tokens instead of refusing it;
    # -1 means the model's context length.
    truncate_prompt_tokens: int | None = Field(None, ge=-1)

    _nulls = null_means_default("encoding_format")
    _input_chunks = chunked_prompt("input")


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage
    htdi: dict[str, Any]
