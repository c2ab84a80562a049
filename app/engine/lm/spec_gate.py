"""Whether batched verification passes pay for themselves, judged by measured throughput.

A plain decode step of B rows yields B tokens. A verification pass feeds each row ``1 + K``
positions and yields B tokens plus the accepted drafts; on the CPU the wider pass costs more
(~1.6x for (16, 3) at short context, several times more at long context, where attention
over thousands of cached positions grows with K), so with prompts that do not copy from
their context (ordinary questions and chat) passes were a net loss: 16 natural-prompt
streams decoded 0.8x as fast as plain batching. The gate keeps a moving average of tokens
per second for each kind of step and lets the better one run, re-measuring the other one
every ``PROBE_EVERY`` steps, so a batch whose rows start quoting (RAG answers, code edits)
gets its passes back. Batches of different sizes have their own gates (one per power of two),
since a step's cost and yield both grow with the batch. Per-row backoff
(:class:`app.engine.lm.drafting.Drafter`) still applies inside a pass.
"""

from __future__ import annotations

from dataclasses import dataclass

ALPHA = 0.25  # weight of the newest step in the moving averages
PROBE_EVERY = 16  # steps between re-measurements of the losing kind


@dataclass
class SpeculationGate:
    spec_rate: float | None = None  # tokens per second of verification passes (EMA)
    plain_rate: float | None = None  # tokens per second of plain steps (EMA)
    decisions: int = 0

    def speculate(self) -> bool:
        """Whether the next step of a batch with drafts should be a verification pass."""
        self.decisions += 1
        if self.spec_rate is None:
            return True
        if self.plain_rate is None:
            return False  # one plain step to compare against
        better = self.spec_rate >= self.plain_rate
        if self.decisions % PROBE_EVERY == 0:
            return not better  # re-measure the other kind now and then
        return better

    def record(self, speculative: bool, tokens: int, seconds: float) -> None:
        """A finished step: ``tokens`` yielded over the batch in ``seconds``."""
        if tokens <= 0 or seconds <= 0:
            return
        rate = tokens / seconds
        if speculative:
            self.spec_rate = rate if self.spec_rate is None else (
                ALPHA * rate + (1 - ALPHA) * self.spec_rate)
        else:
            self.plain_rate = rate if self.plain_rate is None else (
                ALPHA * rate + (1 - ALPHA) * self.plain_rate)
