"""Steer a constrained JSON output to close before ``max_tokens`` cuts it.

A grammar guarantees that every token keeps the output valid, not that it ends: a small
model can write digits or string characters until ``max_tokens`` and leave invalid JSON.
At each constrained step the :class:`Closer` works out how many tokens the shortest way to
finish the value takes from here (a greedy plan, simulated on a copy of the llguidance
matcher: forced tokens first, else the allowed token that brings the JSON nearest to
closed, judged by :class:`JsonDepth`). Once that plan plus the end-of-sequence token
(and a few tokens of slack) fills what is left of the budget, decoding follows the plan.
When the plan does not fit even at the start, nothing is steered and ``finish_reason``
stays ``length``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PLAN_LIMIT = 64  # never plan (or steer) further than this many tokens ahead
# One free token can lengthen the plan by more than one (an escape, a new key), so steering
# starts this many tokens before the plan would have to.
SLACK = 3
_CLOSING_CHARS = frozenset('"}],')
_SHORT_VALUES = ("0", '""', "[]", "{}", "null", "false", "true", '"')


@dataclass
class JsonDepth:
    """How far compact JSON text is from closed: open strings, containers, owed values."""

    stack: list[str] = field(default_factory=list)
    in_string: bool = False
    escaped: bool = False
    owed: int = 0  # 1: a value must come (after ":" or an array's ","); 2: a key and value

    def copy(self) -> JsonDepth:
        return JsonDepth(list(self.stack), self.in_string, self.escaped, self.owed)

    def feed(self, text: str) -> JsonDepth:
        for ch in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                continue
            if ch == '"':
                self.in_string, self.owed = True, 0
            elif ch in "{[":
                self.stack.append(ch)
                self.owed = 0
            elif ch in "}]":
                if self.stack:
                    self.stack.pop()
                self.owed = 0
            elif ch == ":":
                self.owed = 1
            elif ch == ",":
                self.owed = 2 if self.stack and self.stack[-1] == "{" else 1
            elif not ch.isspace():
                self.owed = 0
        return self

    def distance(self) -> int:
        return int(self.in_string) + len(self.stack) + self.owed


class ClosingTokens:
    """Per tokenizer: the candidate tokens a closing plan picks from, and token texts."""

    def __init__(self, vocab: dict[str, int], text_of: Callable[[int], str]) -> None:
        self.text_of = text_of
        closers = [(t, i) for t, i in vocab.items()
                   if t and len(t) <= 4 and set(t) <= _CLOSING_CHARS]
        closers.sort(key=lambda ti: (-len(ti[0]), ti[0]))
        values = [(t, vocab[t]) for t in _SHORT_VALUES if t in vocab]
        self.pool: list[tuple[str, int]] = closers + values


class Closer:
    """One sequence's closing plan; ``mask`` gives a matcher's allowed tokens."""

    def __init__(
        self, tokens: ClosingTokens, mask: Callable[[Any], np.ndarray], stop_id: int
    ) -> None:
        self.tokens = tokens
        self.mask = mask
        self.stop_id = stop_id
        self.depth = JsonDepth()

    def consumed(self, token: int) -> None:
        self.depth.feed(self.tokens.text_of(token))

    def choose(self, matcher: Any, allowed: np.ndarray, depth: JsonDepth) -> int | None:
        """The plan's next token from this state (``stop_id`` once the value is complete)."""
        if matcher.is_accepting():
            return self.stop_id
        forced = matcher.compute_ff_tokens()
        if forced:
            return int(forced[0])
        best: tuple[int, int] | None = None
        for rank, (text, token) in enumerate(self.tokens.pool):
            if token < allowed.shape[0] and allowed[token]:
                score = depth.copy().feed(text).distance()
                if best is None or score < best[0]:
                    best = (score, rank)
        if best is not None:
            return self.tokens.pool[best[1]][1]
        ids = np.flatnonzero(allowed)
        return int(ids[0]) if ids.size else None

    def plan_length(self, matcher: Any, limit: int) -> int | None:
        """Tokens the greedy plan needs to complete the value (None: not within ``limit``)."""
        copy, depth = matcher.deep_copy(), self.depth.copy()
        for steps in range(limit + 1):
            if copy.is_accepting() or copy.is_stopped():
                return steps
            token = self.choose(copy, self.mask(copy), depth)
            if token is None or token == self.stop_id or not copy.consume_token(token):
                return None
            depth.feed(self.tokens.text_of(token))
        return None

    def steer(self, matcher: Any, allowed: np.ndarray, remaining: int) -> int | None:
        """The token decoding must take now, or None while the model may choose.

        ``remaining``: tokens left in the budget, this one included; the plan and the
        end-of-sequence token must both fit."""
        if remaining > PLAN_LIMIT + 1 + SLACK:
            return None
        needed = self.plan_length(matcher, remaining)
        if needed is None or needed + 1 + SLACK < remaining:
            return None
        return self.choose(matcher, allowed, self.depth)
