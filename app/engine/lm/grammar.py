"""Constrained decoding with llguidance: JSON schemas and other grammars, masked per token.

llguidance's own MLX helper uses a Metal kernel, so the bitmask is applied here with
portable MLX ops (works on CPU, Metal and CUDA). Each constrained sequence owns its own
``LLMatcher``, so constraints hold inside a continuous batch.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np

NEG_INF = float("-inf")


class GrammarError(ValueError):
    """The schema or grammar cannot be compiled; the message is for the client."""


def json_schema_grammar(schema: dict[str, Any] | bool) -> str:
    """A grammar for JSON matching ``schema`` (compact: no free whitespace, which keeps small
    models from looping on newlines)."""
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        )
    except Exception as exc:  # noqa: BLE001 - llguidance reports bad schemas by raising
        raise GrammarError(f"invalid JSON schema: {exc}") from exc


class GrammarFactory:
    """Per-model llguidance tokenizer (built once, ~1 s) and grammar validation."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: set[int]) -> None:
        self._hf = getattr(tokenizer, "_tokenizer", tokenizer)
        self.vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._lock = threading.Lock()
        self._ll_tokenizer: Any = None

    @property
    def ll_tokenizer(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                eos = self._eos[0] if self._eos else None
                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    self._hf, n_vocab=self.vocab_size, eos_token=eos
                )
            return self._ll_tokenizer

    def validate(self, grammar: str) -> None:
        """Raise GrammarError with llguidance's message if the grammar is unusable."""
        error = llguidance.LLMatcher.validate_grammar(grammar, self.ll_tokenizer)
        if error:
            raise GrammarError(error)

    def constraint(self, grammar: str, stop_token_ids: set[int]) -> GrammarConstraint:
        return GrammarConstraint(
            llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0),
            self.vocab_size,
            sorted(stop_token_ids),
        )


class GrammarConstraint:
    """A logits processor: advance the matcher by the last token, mask what it forbids.

    When the grammar is complete only end-of-sequence tokens stay allowed, so the sequence
    ends with ``finish_reason`` ``stop`` right after the last grammatical token.
    """

    def __init__(self, matcher: Any, vocab_size: int, stop_ids: list[int]) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.stop_ids = mx.array(stop_ids) if stop_ids else None
        self._started = False

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self._started:
            self.matcher.consume_token(int(tokens[-1].item()))
        self._started = True
        if self.matcher.is_error() or self.matcher.is_stopped():
            return self._only_stop(logits)
        raw = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(raw, bitorder="little")[: logits.shape[-1]].astype(bool)
        if allowed.shape[0] < logits.shape[-1]:
            allowed = np.pad(allowed, (0, logits.shape[-1] - allowed.shape[0]))
        if not allowed.any():
            return self._only_stop(logits)
        return mx.where(mx.array(allowed)[None, :], logits, NEG_INF)

    def _only_stop(self, logits: mx.array) -> mx.array:
        if self.stop_ids is None:
            return logits
        keep = mx.zeros((logits.shape[-1],), dtype=mx.int32).at[self.stop_ids].add(1) > 0
        return mx.where(keep[None, :], logits, NEG_INF)
