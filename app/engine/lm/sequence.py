"""One running sequence: turns generated token ids into the events its request receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from app.engine.lm.stops import StopStringMatcher
from app.engine.lm.types import Finished, GenerationRequest, TextDelta, TokenLogprob


def token_logprob(row: mx.array, token: int, top: int) -> TokenLogprob:
    """The chosen token's log-probability and the ``top`` most likely tokens, best first."""
    chosen = row[token].item()
    alternatives: list[tuple[int, float]] = []
    if top > 0:
        ids = mx.argpartition(-row, kth=top - 1)[:top]
        values = row[ids]
        order = mx.argsort(-values)
        alternatives = list(
            zip(ids[order].tolist(), values[order].tolist(), strict=True)
        )
    return TokenLogprob(token, float(chosen), alternatives)


@dataclass
class SequenceState:
    request: GenerationRequest
    detokenizer: Any
    stop_ids: set[int]  # tokens that end the sequence without text (EOS, stop_token_ids)
    cached_tokens: int = 0
    completion_tokens: int = 0
    stops: StopStringMatcher = field(init=False)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stops = StopStringMatcher(self.request.params.stop)

    def on_token(self, token: int, row: mx.array | None, finish_reason: str | None) -> str | None:
        """Push the text this token completes; return the finish reason if it ended."""
        self.completion_tokens += 1
        want = self.request.params.logprobs
        if want is not None and row is not None:
            self.pending_logprobs.append(token_logprob(row, token, want))
        ends_silently = finish_reason == "stop" and token in self.stop_ids
        if not ends_silently:
            self.detokenizer.add_token(token)
        segment = self.detokenizer.last_segment
        if finish_reason is not None:
            self.detokenizer.finalize()
            segment += self.detokenizer.last_segment
        text, hit = self.stops.feed(segment)
        if finish_reason is not None and not hit:
            text += self.stops.flush()
        if text:
            logprobs = self._take_logprobs()
            self.request.push(TextDelta(text, token, logprobs))
        if hit:
            self.pending_logprobs.clear()  # they belong to the stop string, never emitted
            return self.finish("stop", self.stops.matched)
        if finish_reason is not None:
            return self.finish(finish_reason)
        return None

    def _take_logprobs(self) -> list[TokenLogprob] | None:
        if self.request.params.logprobs is None:
            return None
        taken, self.pending_logprobs = self.pending_logprobs, []
        return taken

    def finish(self, reason: str, stop_sequence: str | None = None) -> str:
        self.request.push(
            Finished(
                finish_reason=reason,
                prompt_tokens=len(self.request.prompt_tokens),
                completion_tokens=self.completion_tokens,
                cached_tokens=self.cached_tokens,
                logprobs=self._take_logprobs() or None,
                stop_sequence=stop_sequence,
            )
        )
        return reason
