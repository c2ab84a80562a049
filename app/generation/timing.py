"""Per-request measurements taken on the event loop: TTFT, inter-token gaps, tokens, queue.

A :class:`RequestTimer` lives on each request's :class:`~app.core.context.RequestContext`.
The generation core feeds it every engine event (``timer.observe(item, submission)``); the
middleware attaches a :class:`MetricsSink` (Prometheus) before the request runs and calls
:meth:`RequestTimer.close` when the response is complete, then logs the totals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.engine.lm.types import Failed, Finished, TextDelta


class MetricsSink(Protocol):
    """What the timer reports to (implemented by :class:`app.core.metrics.ServerMetrics`)."""

    def observe_ttft(self, model: str, seconds: float) -> None: ...
    def observe_itl(self, model: str, seconds: float) -> None: ...
    def observe_queue(self, model: str, seconds: float) -> None: ...
    def observe_e2e(self, model: str, seconds: float) -> None: ...
    def count_finished(self, model: str, reason: str) -> None: ...
    def observe_sequence(self, model: str, stats: SequenceStats) -> None: ...
    def observe_params_n(self, model: str, n: int) -> None: ...


@dataclass(frozen=True)
class SequenceStats:
    """One finished engine sequence (a choice of a prompt), for vLLM's per-request series."""

    prompt_tokens: int
    generation_tokens: int
    max_tokens: int
    prefill_s: float  # admitted to first token
    decode_s: float  # first token to the end
    inference_s: float  # admitted to the end


@dataclass
class _TokenGroup:
    """Tokens of one sequence that arrived together (one engine step, or text that waited
    for later tokens): their inter-token latencies are observed once the group is complete,
    the gap since the previous group spread evenly over them."""

    step: int
    tokens: int
    gap: float | None  # None: the sequence's first tokens (the first is TTFT, not ITL)


@dataclass
class RequestTimer:
    """Timing and token totals of one API request (all its choices and prompts)."""

    sink: MetricsSink | None = None
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    first_token_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    queue_s: float | None = None
    finish_reasons: list[str] = field(default_factory=list)
    error_code: str | None = None
    sequences: int = 0  # engine sequences of the submissions seen (choices × prompts)
    _submissions: set[int] = field(default_factory=set)
    _last: dict[tuple[int, int], float] = field(default_factory=dict)
    _groups: dict[tuple[int, int], _TokenGroup] = field(default_factory=dict)
    _counted: dict[tuple[int, int], int] = field(default_factory=dict)  # tokens observed
    _first_token: dict[tuple[int, int], float] = field(default_factory=dict)  # monotonic
    _ended: set[tuple[int, int]] = field(default_factory=set)
    _closed: bool = False

    def observe(self, item: Any, submission: Any) -> None:
        """Record one ``ChoiceEvent`` (``.index``, ``.event``) of ``submission``."""
        key = (id(submission), item.index)
        event = item.event
        now = time.perf_counter()
        if key not in self._last:
            self._first_event(key, submission, item.index, now)
        if isinstance(event, TextDelta):
            if self.first_token_at is None:
                self.first_token_at = now
                self._report("observe_ttft", now - self.started)
            self._first_token.setdefault(key, time.monotonic())
            self._tokens(key, event.tokens, event.step, now)
        elif isinstance(event, Finished):
            # tokens that never became text (end-of-sequence, a stop string) count too
            self._tokens(key, event.completion_tokens - self._counted.get(key, 0), -1, now)
            self._flush(key)
            self._sequence_done(key, submission.requests[item.index], event)
            self._ended.add(key)
            self.prompt_tokens += event.prompt_tokens
            self.completion_tokens += event.completion_tokens
            self.cached_tokens += event.cached_tokens
            self.finish_reasons.append(event.finish_reason)
            self._report("count_finished", event.finish_reason)
        elif isinstance(event, Failed):
            self._ended.add(key)
            self.error_code = event.code
            self.finish_reasons.append("error")
            self._report("count_finished", "error")

    def _tokens(self, key: tuple[int, int], tokens: int, step: int, now: float) -> None:
        """``tokens`` more generated tokens arrived at ``now`` from engine step ``step``."""
        if tokens <= 0:
            return
        self._counted[key] = self._counted.get(key, 0) + tokens
        group = self._groups.get(key)
        if group is not None and step > 0 and group.step == step:
            group.tokens += tokens
            return
        self._flush(key)
        last = self._last[key]
        self._groups[key] = _TokenGroup(step, tokens, now - last if last > 0 else None)
        self._last[key] = now

    def _flush(self, key: tuple[int, int]) -> None:
        """One inter-token latency per token of the finished group."""
        group = self._groups.pop(key, None)
        if group is None:
            return
        if group.gap is None:  # the first token is TTFT; the ones with it came at once
            values = [0.0] * (group.tokens - 1)
        else:
            values = [group.gap / group.tokens] * group.tokens
        for value in values:
            self._report("observe_itl", value)

    def _sequence_done(self, key: tuple[int, int], request: Any, event: Finished) -> None:
        end = time.monotonic()
        admitted = request.admitted_at if request.admitted_at is not None else end
        first = self._first_token.get(key, end)
        self._report("observe_sequence", SequenceStats(
            event.prompt_tokens, event.completion_tokens, request.params.max_tokens,
            max(0.0, first - admitted), max(0.0, end - first), max(0.0, end - admitted)))

    def _first_event(self, key: tuple[int, int], submission: Any, index: int, now: float) -> None:
        self._last[key] = 0.0
        if self.model is None:
            self.model = submission.managed.spec.id
        if id(submission) not in self._submissions:
            self._submissions.add(id(submission))
            self.sequences += len(submission.requests)
            self._report("observe_params_n", len(submission.requests))
        request = submission.requests[index]
        if request.admitted_at is not None:
            waited = max(0.0, request.admitted_at - request.enqueued_at)
            self.queue_s = waited if self.queue_s is None else max(self.queue_s, waited)
            self._report("observe_queue", waited)

    def _report(self, method: str, value: Any) -> None:
        if self.sink is not None and self.model is not None:
            getattr(self.sink, method)(self.model, value)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    def close(self) -> None:
        """The response is over: sequences that never ended were aborted (client gone)."""
        if self._closed or not self.sequences:
            return
        self._closed = True
        for _ in range(self.sequences - len(self._ended)):
            self.finish_reasons.append("abort")
            self._report("count_finished", "abort")
        self._report("observe_e2e", time.perf_counter() - self.started)
