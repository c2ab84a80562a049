"""The embeddings dialect's request checks (no model needed)."""

from __future__ import annotations

import pytest

from app.core.errors import APIError
from app.handler.embeddings import EmbeddingsHandler
from app.schemas.embeddings import EmbeddingRequest


def _fit(ids: list[list[int]], truncate: int | None, context: int = 8) -> list[list[int]]:
    body = EmbeddingRequest(model="m", input="x", truncate_prompt_tokens=truncate)
    return EmbeddingsHandler._fit_context(ids, body, context)


def test_truncation_keeps_the_last_tokens_within_the_context():
    ids = [list(range(12))]
    assert _fit(ids, 3) == [[9, 10, 11]]
    assert _fit(ids, -1) == [list(range(4, 12))]
    assert _fit([[1, 2]], 8) == [[1, 2]]


def test_truncate_prompt_tokens_above_the_context_is_a_400_naming_the_limit():
    with pytest.raises(APIError) as caught:
        _fit([[1, 2, 3]], 9)
    error = caught.value
    assert error.status == 400 and error.param == "truncate_prompt_tokens"
    assert "8" in error.message and "9" in error.message


def test_too_long_input_without_truncation_is_a_context_error():
    with pytest.raises(APIError) as caught:
        _fit([list(range(9))], None)
    assert caught.value.code == "context_length_exceeded"
