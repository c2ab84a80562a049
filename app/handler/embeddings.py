"""Embeddings: OpenAI semantics over the model's micro-batcher."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from app.config import Settings
from app.core import errors
from app.core.context import RequestContext
from app.engine.base import QueueFullError
from app.generation.text_size import check_texts, tokenize_bounded
from app.lifecycle.manager import ModelManager
from app.schemas.embeddings import EmbeddingRequest


def _inputs(body: EmbeddingRequest) -> tuple[list[str] | None, list[list[int]] | None]:
    """Split ``input`` into texts or token-id lists (OpenAI accepts four shapes)."""
    value = body.input
    if isinstance(value, str):
        return [value], None
    if not value:
        raise errors.invalid_request("input must not be empty.", param="input")
    if all(isinstance(item, str) for item in value):
        return list(value), None  # type: ignore[arg-type]
    if all(isinstance(item, int) for item in value):
        return None, [list(value)]  # type: ignore[arg-type]
    return None, [list(item) for item in value]  # type: ignore[union-attr]


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


def _shorten(vectors: list[list[float]], dimensions: int) -> list[list[float]]:
    """Matryoshka truncation: keep the first ``dimensions`` values, renormalised."""
    out = np.asarray(vectors, dtype=np.float32)[:, :dimensions]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norms, 1e-12)).tolist()


class EmbeddingsHandler:
    def __init__(self, manager: ModelManager, settings: Settings) -> None:
        self.manager = manager
        self.settings = settings

    async def create(self, body: EmbeddingRequest, ctx: RequestContext) -> dict[str, Any]:
        ctx.apply_body_metadata(body.metadata)
        ctx.model = body.model
        texts, token_ids = _inputs(body)
        count = len(texts or token_ids or [])
        limit = self.settings.max_embedding_inputs
        if count > limit:
            raise errors.invalid_request(
                f"input has {count} items; at most {limit} are allowed per request.",
                param="input",
            )
        if texts is not None and any(not t for t in texts):
            raise errors.invalid_request("input must not contain empty strings.", param="input")
        if token_ids is not None and any(not ids for ids in token_ids):
            raise errors.invalid_request("input must not contain empty token lists.", param="input")
        async with self.manager.lease(body.model, "embeddings") as managed:
            return await self._embed(body, ctx, managed, texts, token_ids)

    async def _embed(
        self,
        body: EmbeddingRequest,
        ctx: RequestContext,
        managed: Any,
        texts: list[str] | None,
        token_ids: list[list[int]] | None,
    ) -> dict[str, Any]:
        spec, loaded = managed.spec, managed.loaded
        ctx.model = spec.id
        dims = spec.dimensions or loaded.dimensions
        if body.dimensions is not None and body.dimensions != dims:
            if not spec.matryoshka:
                raise errors.invalid_request(
                    f"The model {spec.id!r} does not support the dimensions parameter "
                    f"(it always returns {dims} dimensions).",
                    param="dimensions",
                )
            if body.dimensions > dims:
                raise errors.invalid_request(
                    f"dimensions must be at most {dims} for this model.", param="dimensions"
                )
        if texts is not None:
            if body.truncate_prompt_tokens is None:
                check_texts(texts, spec.context_length, self.settings.max_chars_per_token,
                            "input")
            token_ids = await tokenize_bounded(
                self.settings.tokenize_workers, sum(map(len, texts)), loaded.tokenize, texts
            )
        assert token_ids is not None
        token_ids = self._fit_context(token_ids, body, spec.context_length)
        try:
            vectors = await managed.engine.embed(token_ids)
        except ValueError as exc:  # the batcher's validation of token ids
            raise errors.invalid_request(str(exc), param="input") from exc
        except QueueFullError as exc:
            raise errors.queue_full(str(exc)) from exc
        if body.dimensions is not None and body.dimensions < dims:
            vectors = _shorten(vectors, body.dimensions)
        tokens = sum(len(ids) for ids in token_ids)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
                for i, v in enumerate(vectors)
            ],
            "model": spec.id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "htdi": ctx.htdi(),
        }

    @staticmethod
    def _fit_context(
        token_ids: list[list[int]], body: EmbeddingRequest, context: int
    ) -> list[list[int]]:
        keep = body.truncate_prompt_tokens
        if keep is not None and keep > context:
            raise errors.invalid_request(
                f"truncate_prompt_tokens ({keep}) is greater than this model's maximum "
                f"context length ({context} tokens); use at most {context}, or -1 for the "
                "whole context.",
                param="truncate_prompt_tokens",
            )
        if keep is not None:
            keep = context if keep == -1 else keep
            return [ids[-keep:] if keep else ids for ids in token_ids]
        for i, ids in enumerate(token_ids):
            if len(ids) > context:
                raise errors.APIError(
                    400,
                    f"This model's maximum context length is {context} tokens, but input {i} "
                    f"has {len(ids)} tokens. Shorten it, or set truncate_prompt_tokens.",
                    param="input",
                    code="context_length_exceeded",
                )
        return token_ids
