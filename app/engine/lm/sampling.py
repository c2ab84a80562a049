"""Per-request samplers and logits processors built on mlx-lm's sampling utilities.

mlx-lm's samplers draw from MLX's global random state, so a seeded request would give
different text depending on what else is in the batch. Seeded samplers here carry their
own PRNG key instead, split once per step, which makes them batch-independent.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    greedy_sampler,
)

from app.engine.lm.types import SamplingParams

Sampler = Callable[[mx.array], mx.array]
MIN_TEMPERATURE = 1e-3  # below it sampling is greedy in effect (and 1/T overflows near 0)


def make_request_sampler(params: SamplingParams) -> Sampler:
    """Greedy requests share one sampler object so a batch of them samples in one call."""
    if params.temperature < MIN_TEMPERATURE:
        return greedy_sampler
    filters: list[Callable[[mx.array], mx.array]] = []
    if 0 < params.top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, params.top_p))
    if params.min_p > 0:
        filters.append(lambda x: apply_min_p(x, params.min_p))
    if params.top_k > 0:
        filters.append(lambda x: apply_top_k(x, params.top_k))
    inv_temp = 1.0 / params.temperature
    key = mx.random.key(params.seed) if params.seed is not None else None

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        for apply in filters:
            logprobs = apply(logprobs)
        if key is None:
            return mx.random.categorical(logprobs * inv_temp)
        key, sub = mx.random.split(key)
        return mx.random.categorical(logprobs * inv_temp, key=sub)

    return sample
