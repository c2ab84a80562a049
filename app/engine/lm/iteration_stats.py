"""Tokens per engine step, kept as histogram buckets the metrics collector reads at scrape
time (vLLM's ``vllm:iteration_tokens_total``: prompt tokens prefilled plus tokens generated
in one step)."""

from __future__ import annotations

from dataclasses import dataclass, field

ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclass
class TokenHistogram:
    """Observation counts per upper bound (not cumulative), their sum and count."""

    bounds: tuple[int, ...] = ITERATION_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(ITERATION_BUCKETS) + 1))
    total: float = 0.0
    observations: int = 0

    def observe(self, value: int) -> None:
        index = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[index] += 1
        self.total += value
        self.observations += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (``le``, observations at or below it), ending with ``+Inf``."""
        out, running = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


def step_tokens(generator: object) -> int:
    """Prompt plus generated tokens the generator has processed so far (mlx-lm's
    ``BatchGenerator`` counters; 0 for a generator without them)."""
    counters = getattr(generator, "_counters", None)
    if counters is None:
        return 0
    return int(counters.prompt_tokens + counters.generation_tokens)
