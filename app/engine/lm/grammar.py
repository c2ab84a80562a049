"""Constrained decoding with llguidance: JSON schemas and other grammars, masked per token.

llguidance's own MLX helper uses a Metal kernel, so the bitmask is applied here with
portable MLX ops (works on CPU, Metal and CUDA). Each constrained sequence owns its own
``LLMatcher``, so constraints hold inside a continuous batch.

Compiling a grammar is the expensive part (an 8,000-branch ``anyOf`` takes seconds), so it
happens once per distinct schema, off the engine thread (:meth:`GrammarFactory.compile_schema`,
called from the request's executor, LRU-cached by the schema's hash); the engine only clones
the compiled matcher for each choice (``deep_copy``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np

NEG_INF = float("-inf")
CACHE_SIZE = 64  # compiled grammars kept per model


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


@dataclass(frozen=True, eq=False)
class CompiledGrammar:
    """A grammar and its compiled matcher, which is only ever cloned, never advanced."""

    text: str
    matcher: Any


class GrammarFactory:
    """Per-model llguidance tokenizer (built once, ~1 s), grammar validation and compiled
    grammars (LRU by schema hash)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: set[int]) -> None:
        self._hf = getattr(tokenizer, "_tokenizer", tokenizer)
        self.vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._lock = threading.Lock()
        self._ll_tokenizer: Any = None
        self._compiled: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._cache_lock = threading.Lock()

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

    def compile(self, grammar: str) -> CompiledGrammar:
        """Validate and compile ``grammar`` (GrammarError with llguidance's message)."""
        self.validate(grammar)
        matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return CompiledGrammar(grammar, matcher)

    def compile_schema(self, schema: dict[str, Any] | bool) -> CompiledGrammar:
        """The compiled grammar for a JSON schema, from the cache when the same schema (by
        the hash of its canonical JSON) was compiled before."""
        key = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()
        with self._cache_lock:
            hit = self._compiled.get(key)
            if hit is not None:
                self._compiled.move_to_end(key)
                return hit
        compiled = self.compile(json_schema_grammar(schema))
        with self._cache_lock:
            self._compiled[key] = compiled
            while len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        return compiled

    def constraint(self, grammar: CompiledGrammar | str, stop_token_ids: set[int]
                   ) -> GrammarConstraint:
        """A fresh constraint for one choice: a clone of the compiled matcher."""
        if isinstance(grammar, str):
            grammar = self.compile(grammar)
        return GrammarConstraint(
            grammar.matcher.deep_copy(), self.vocab_size, sorted(stop_token_ids)
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
