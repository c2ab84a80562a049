"""How many prompt tokens one prefill call may process: a time budget, not a fixed size.

A prefill call cannot be interrupted, so a request that arrives while a long prompt is being
prefilled waits for the chunk in progress, then shares the next one (its prompt is padded to
the chunk's length), and only then gets its first token. With mlx-lm's fixed
``prefill_step_size`` (512) a chunk of a 3,000-token prompt took 10-17 s on two busy CPU
cores, so a short chat's first token came after ~40 s. :class:`PrefillBudget` measures what
a padded prompt token costs (an exponential average over recent calls, which follows the
attention cost growing with the context and the machine's load) and sizes each call's chunk
so that the call takes about ``target_s`` (rounded down to a power of two, so that the
model sees few distinct input shapes). Fast hardware (GPUs) reaches ``prefill_step_size``
and keeps the stock chunks.
"""

from __future__ import annotations

MIN_CHUNK = 32  # tokens per row: below this a call is mostly overhead
FIRST_CHUNK = 128  # before anything was measured
SMOOTHING = 0.5  # weight of the newest measurement


class PrefillBudget:
    """Chunk sizes for prefill calls, from the measured cost of a padded prompt token."""

    def __init__(self, target_s: float, max_chunk: int) -> None:
        """``target_s``: seconds one prefill call should take (0: always ``max_chunk``)."""
        self.target_s = target_s
        self.max_chunk = max_chunk
        self.seconds_per_token: float | None = None

    def chunk(self, rows: int) -> int:
        """Tokens per row for the next call prefilling ``rows`` prompts together."""
        if self.target_s <= 0:
            return self.max_chunk
        if self.seconds_per_token is None:
            return min(self.max_chunk, FIRST_CHUNK)
        fit = int(self.target_s / (max(1, rows) * self.seconds_per_token))
        if fit >= self.max_chunk:
            return self.max_chunk
        # a power of two: few distinct input shapes, so few traces (app/kernels/shape_compile)
        return min(self.max_chunk, max(MIN_CHUNK, 1 << max(0, fit.bit_length() - 1)))

    def observe(self, padded_tokens: int, seconds: float) -> None:
        """One call prefilled ``padded_tokens`` (rows × its longest input) in ``seconds``."""
        if padded_tokens <= 0:
            return
        cost = seconds / padded_tokens
        if self.seconds_per_token is None:
            self.seconds_per_token = cost
        else:
            self.seconds_per_token += SMOOTHING * (cost - self.seconds_per_token)
