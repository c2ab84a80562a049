"""Prompt logprobs (prompt scoring) taken from the prefill's own logits.

The prefill runs the model over every prompt token but the last and throws the logits away
(mlx-lm's ``PromptProcessingBatch.prompt`` never evaluates them). For the rows of a prefill
batch whose request asked for prompt logprobs, :class:`ScoringPromptBatch` keeps them: the
logits at position ``j`` score token ``j + 1``, the last position of a chunk scores the
first token of the next chunk, and the one left after the prefill scores the prompt's last
token (which the first decode step feeds). The first token has no score (``None``).

Same pass, same batch: the only extra work is the output projection and a log-softmax over
the watched rows' prompt positions (plus a top-``k`` where alternatives are asked for);
other rows and requests without prompt logprobs cost nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.generate import PromptProcessingBatch

from app.engine.lm.types import TokenLogprob


def _top(rows: mx.array, k: int) -> tuple[mx.array, mx.array] | None:
    """The ``k`` best ids and their values per row (unsorted), or None for ``k == 0``."""
    if k <= 0:
        return None
    ids = mx.argpartition(-rows, kth=k - 1, axis=-1)[..., :k]
    return ids, mx.take_along_axis(rows, ids, axis=-1)


def _entries(
    tokens: list[int], chosen: list[float], top: tuple[list, list] | None
) -> list[TokenLogprob]:
    out = []
    for i, (token, value) in enumerate(zip(tokens, chosen, strict=True)):
        alternatives: list[tuple[int, float]] = []
        if top is not None:
            alternatives = sorted(zip(top[0][i], top[1][i], strict=True), key=lambda p: -p[1])
        out.append(TokenLogprob(token, value, alternatives))
    return out


@dataclass
class PromptScore:
    """One watched sequence: the scores so far and the log-probabilities that will score
    the next prompt token."""

    top: int
    entries: list[TokenLogprob | None] = field(default_factory=list)
    pending: mx.array | None = None  # (vocab,) log-probabilities after the last token seen

    def next_token(self, token: int) -> None:
        """Score a token against the position before it (the first token gets ``None``)."""
        if self.pending is None:
            self.entries.append(None)
            return
        top = _top(self.pending[None], self.top)
        chosen = self.pending[token]
        mx.eval(chosen, top)
        lists = None if top is None else (top[0].tolist(), top[1].tolist())
        self.entries += _entries([token], [chosen.item()], lists)
        self.pending = None

    def chunk(self, logits: mx.array, tokens: list[int]) -> None:
        """``logits`` (len(tokens), vocab) came from feeding ``tokens``."""
        self.next_token(tokens[0])
        logprobs = logits.astype(mx.float32)
        logprobs = logprobs - mx.logsumexp(logprobs, axis=-1, keepdims=True)
        scored = logprobs[:-1]
        targets = mx.array(tokens[1:], dtype=mx.int32)
        chosen = mx.take_along_axis(scored, targets[:, None], axis=-1)[:, 0]
        top = _top(scored, self.top) if len(tokens) > 1 else None
        self.pending = logprobs[-1]
        mx.eval(chosen, top, self.pending)
        lists = None if top is None else (top[0].tolist(), top[1].tolist())
        self.entries += _entries(tokens[1:], chosen.tolist(), lists)


class PromptScorer:
    """The sequences (by generator uid) whose prompt logprobs are being collected."""

    def __init__(self) -> None:
        self.watched: dict[int, PromptScore] = {}

    def watch(self, uid: int, top: int) -> None:
        self.watched[uid] = PromptScore(top)

    def take(self, uid: int) -> list[TokenLogprob | None] | None:
        """The finished scores of ``uid`` (None when it was not watched)."""
        score = self.watched.pop(uid, None)
        return None if score is None else score.entries

    def drop(self, uids: list[int]) -> None:
        for uid in uids:
            self.watched.pop(uid, None)


class _ScoringModel:
    """Stands in for the model during one ``prompt()`` call: passes every call through and
    hands the watched rows' logits (real positions only: rows are right-padded) on."""

    def __init__(self, model: Any, rows: list[tuple[int, PromptScore, list[int]]]) -> None:
        self.model = model
        self.rows = rows
        self.offset = 0

    def __call__(self, inputs: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        logits = self.model(inputs, *args, **kwargs)
        width = inputs.shape[1]
        for row, score, tokens in self.rows:
            part = tokens[self.offset:self.offset + width]
            if part:
                score.chunk(logits[row, : len(part)], part)
        self.offset += width
        return logits


class ScoringPromptBatch(PromptProcessingBatch):
    """A prefill batch that records prompt logprobs for the uids its scorer watches."""

    scorer: PromptScorer

    def _watched(self, tokens: list[list[int]]) -> list[tuple[int, PromptScore, list[int]]]:
        watched = self.scorer.watched
        return [(row, watched[uid], tokens[row]) for row, uid in enumerate(self.uids)
                if uid in watched]

    def prompt(self, tokens: list[list[int]]) -> None:
        rows = self._watched(tokens) if tokens else []
        if not rows:
            return super().prompt(tokens)
        model = self.model
        self.model = _ScoringModel(model, rows)
        try:
            return super().prompt(tokens)
        finally:
            self.model = model

    def generate(self, tokens: list[list[int]]) -> Any:
        """The prompts' last tokens are scored by what the prefill left pending."""
        if any(len(t) > 1 for t in tokens):
            self.prompt([t[:-1] for t in tokens])
            tokens = [t[-1:] for t in tokens]
        for _, score, last in self._watched(tokens):
            score.next_token(last[-1])
        return super().generate(tokens)

    def _copy(self) -> ScoringPromptBatch:
        new = super()._copy()
        new.scorer = self.scorer
        return new


def scoring(batch: PromptProcessingBatch, scorer: PromptScorer) -> PromptProcessingBatch:
    """Make ``batch`` (built by mlx-lm) a :class:`ScoringPromptBatch` for ``scorer``."""
    batch.__class__ = ScoringPromptBatch
    batch.scorer = scorer  # type: ignore[attr-defined]
    return batch
