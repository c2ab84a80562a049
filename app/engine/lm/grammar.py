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

from app.engine.lm.closing import PLAN_LIMIT, Closer, ClosingTokens
from app.engine.lm.types import SamplingParams

NEG_INF = float("-inf")
CACHE_SIZE = 64  # compiled grammars kept per model


class GrammarError(ValueError):
    """The schema or grammar cannot be compiled; the message is for the client."""


# 18 digits: inside int64 (llguidance cannot build the range regex for int64's own ends)
INT_LIMIT = 10**18 - 1
_INT_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def bounded_schema(schema: Any) -> Any:
    """``schema`` with every integer that has no bounds limited to 18 digits (int64-safe),
    so a model cannot write digits forever; nested schemas are rewritten too."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    kinds = out.get("type")
    is_int = kinds == "integer" or (isinstance(kinds, list) and "integer" in kinds)
    if is_int and not any(key in out for key in _INT_BOUNDS):
        out["minimum"], out["maximum"] = -INT_LIMIT, INT_LIMIT
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [bounded_schema(item) for item in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: bounded_schema(item) for name, item in out[key].items()}
    for key in _SUBSCHEMAS:
        if key in out:
            out[key] = bounded_schema(out[key])
    return out


def json_schema_grammar(schema: dict[str, Any] | bool) -> str:
    """A grammar for JSON matching ``schema`` (compact: no free whitespace, which keeps small
    models from looping on newlines; integers without bounds limited to 18 digits)."""
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(bounded_schema(schema)), defaults={"whitespace_flexible": False}
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
        self._closing: ClosingTokens | None = None

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

    @property
    def closing_tokens(self) -> ClosingTokens:
        with self._lock:
            if self._closing is None:
                vocab = self._hf.get_vocab()
                self._closing = ClosingTokens(vocab, lambda t: self._hf.decode([t]))
            return self._closing

    def constraint(self, params: SamplingParams, stop_token_ids: set[int]) -> GrammarConstraint:
        """The logits processor for ``params.grammar`` (a clone of the compiled matcher),
        steered to close within ``params.max_tokens`` and applied only after a think block
        (``params.think``)."""
        grammar = params.grammar
        assert grammar is not None
        if isinstance(grammar, str):
            grammar = self.compile(grammar)
        stops = sorted(stop_token_ids)
        closer = None
        if stops:
            closer = Closer(self.closing_tokens, lambda m: allowed_tokens(m, self.vocab_size),
                            stops[0])
        return GrammarConstraint(grammar.matcher.deep_copy(), self.vocab_size, stops,
                                 closer=closer, max_tokens=params.max_tokens, think=params.think)


def allowed_tokens(matcher: Any, vocab_size: int) -> np.ndarray:
    """The matcher's token mask as booleans over ``vocab_size`` ids."""
    raw = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
    allowed = np.unpackbits(raw, bitorder="little")[:vocab_size].astype(bool)
    if allowed.shape[0] < vocab_size:
        allowed = np.pad(allowed, (0, vocab_size - allowed.shape[0]))
    return allowed


class GrammarConstraint:
    """A logits processor: advance the matcher by the last token, mask what it forbids.

    When the grammar is complete only end-of-sequence tokens stay allowed, so the sequence
    ends with ``finish_reason`` ``stop`` right after the last grammatical token. With a
    :class:`~app.engine.lm.closing.Closer`, decoding is steered to complete the value
    while the budget still allows. With ``think`` (``(start id, end id, open)``), a think
    block (open from the prompt, or opened by the first token) is left free and the
    grammar starts after its end token, which is forced once the budget left is what
    the grammar needs.
    """

    def __init__(self, matcher: Any, vocab_size: int, stop_ids: list[int], *,
                 closer: Closer | None = None, max_tokens: int | None = None,
                 think: tuple[int, int, bool] | None = None) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.stop_ids = mx.array(stop_ids) if stop_ids else None
        self.closer = closer
        self.max_tokens = max_tokens
        self.think = think
        self._thinking = bool(think and think[2])
        self._calls = 0
        self._grammar_needs: int | None = None  # plan length from the grammar's start

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        last = int(tokens[-1].item()) if self._calls else None
        self._calls += 1
        remaining = None if self.max_tokens is None else self.max_tokens - self._calls + 1
        if last is not None:
            if self._thinking:
                self._thinking = last != self.think[1]  # type: ignore[index]
            elif self._calls == 2 and self.think is not None and last == self.think[0]:
                self._thinking = True  # the first token opened a think block
            else:
                self.matcher.consume_token(last)
                if self.closer is not None:
                    self.closer.consumed(last)
        if self._thinking:
            if self._must_end_thinking(remaining):
                return self._forced(logits, self.think[1])  # type: ignore[index]
            return logits
        if self.matcher.is_error() or self.matcher.is_stopped():
            return self._only_stop(logits)
        allowed = allowed_tokens(self.matcher, logits.shape[-1])
        if not allowed.any():
            return self._only_stop(logits)
        if self._calls == 1 and self.think is not None and not self.think[2]:
            allowed[self.think[0]] = True  # the answer may begin with a think block
        if self.closer is not None and remaining is not None:
            forced = self.closer.steer(self.matcher, allowed, remaining)
            if forced is not None:
                return self._forced(logits, forced)
        return mx.where(mx.array(allowed)[None, :], logits, NEG_INF)

    def _must_end_thinking(self, remaining: int | None) -> bool:
        """The end token, the grammar's shortest completion and end-of-sequence fill the
        budget left."""
        if self.closer is None or remaining is None or remaining > PLAN_LIMIT + 2:
            return False
        if self._grammar_needs is None:
            self._grammar_needs = self.closer.plan_length(self.matcher, PLAN_LIMIT)
            if self._grammar_needs is None:
                self._grammar_needs = PLAN_LIMIT + 1  # cannot close: never force
        return remaining <= self._grammar_needs + 2

    def _forced(self, logits: mx.array, token: int) -> mx.array:
        keep = mx.arange(logits.shape[-1]) == token
        return mx.where(keep[None, :], logits, NEG_INF)

    def _only_stop(self, logits: mx.array) -> mx.array:
        if self.stop_ids is None:
            return logits
        keep = mx.zeros((logits.shape[-1],), dtype=mx.int32).at[self.stop_ids].add(1) > 0
        return mx.where(keep[None, :], logits, NEG_INF)
