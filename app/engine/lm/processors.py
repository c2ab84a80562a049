"""Per-request logits processors with OpenAI / vLLM semantics.

Each processor is called by mlx-lm's ``GenerationBatch`` as ``f(tokens, logits)`` where
``tokens`` is everything in the sequence's KV cache so far (prompt, then generated tokens)
and ``logits`` has shape ``(1, vocab)``. mlx-lm's own penalty helpers look at a window of
recent tokens, prompt included; OpenAI's presence/frequency penalties count generated tokens
only, so they are written here, knowing where the prompt ends.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

from app.engine.lm.types import SamplingParams

Processor = Callable[[mx.array, mx.array], mx.array]

NEG_INF = float("-inf")


def _logit_bias(bias: tuple[tuple[int, float], ...]) -> Processor:
    ids = mx.array([t for t, _ in bias])
    values = mx.array([v for _, v in bias], dtype=mx.float32)

    def apply(_: mx.array, logits: mx.array) -> mx.array:
        return logits.at[:, ids].add(values.astype(logits.dtype))

    return apply


def _presence_frequency(prompt_len: int, presence: float, frequency: float) -> Processor:
    def apply(tokens: mx.array, logits: mx.array) -> mx.array:
        generated = tokens[prompt_len:]
        if generated.size == 0:
            return logits
        counts = mx.zeros((logits.shape[-1],), dtype=logits.dtype).at[generated].add(1)
        penalty = frequency * counts + presence * (counts > 0).astype(logits.dtype)
        return logits - penalty[None, :]

    return apply


MIN_REPETITION_PENALTY = 1e-2  # dividing logits by less overflows float32


def _repetition(penalty: float) -> Processor:
    """vLLM / HF semantics: tokens seen in prompt or output are scaled by the penalty
    (at least ``MIN_REPETITION_PENALTY``, so a tiny one cannot turn logits into inf/NaN)."""
    penalty = max(penalty, MIN_REPETITION_PENALTY)

    def apply(tokens: mx.array, logits: mx.array) -> mx.array:
        if tokens.size == 0:
            return logits
        seen = mx.zeros((logits.shape[-1],), dtype=mx.int32).at[tokens].add(1) > 0
        scaled = mx.where(logits < 0, logits * penalty, logits / penalty)
        return mx.where(seen[None, :], scaled, logits)

    return apply


def _suppress_until(prompt_len: int, min_tokens: int, banned: list[int]) -> Processor:
    """``min_tokens``: end-of-sequence and stop tokens are impossible until enough output."""
    ids = mx.array(banned)

    def apply(tokens: mx.array, logits: mx.array) -> mx.array:
        if tokens.size - prompt_len >= min_tokens:
            return logits
        return logits.at[:, ids].add(NEG_INF)

    return apply


def make_processors(
    params: SamplingParams, prompt_len: int, stop_token_ids: set[int]
) -> list[Processor]:
    """The processors one request needs, in a fixed order (bias, penalties, min_tokens).

    ``prompt_len`` is the full prompt length: when the first token is sampled the context is
    exactly the prompt, and after that ``tokens[prompt_len:]`` are the generated tokens.
    """
    processors: list[Processor] = []
    if params.logit_bias:
        processors.append(_logit_bias(params.logit_bias))
    if params.presence_penalty or params.frequency_penalty:
        processors.append(
            _presence_frequency(prompt_len, params.presence_penalty, params.frequency_penalty)
        )
    if params.repetition_penalty != 1.0:
        processors.append(_repetition(params.repetition_penalty))
    if params.min_tokens > 0 and stop_token_ids:
        processors.append(_suppress_until(prompt_len, params.min_tokens, sorted(stop_token_ids)))
    return processors
