"""Plain data passed between the handler (event loop) and the engine (worker thread)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence decoding controls; each sequence in a batch keeps its own."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None  # None: off; k >= 0: chosen token plus the top k
    grammar: str | None = None  # llguidance grammar the output must follow
    speculative: bool = True  # may this sequence decode with prompt-lookup drafts


@dataclass
class TokenLogprob:
    """One generated token's log-probability and the most likely alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class TextDelta:
    """New text for one sequence, with the logprobs of the tokens it came from if asked."""

    text: str
    token_id: int
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Finished:
    """The last event of a sequence."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None  # of tokens whose text was never emitted


@dataclass
class Failed:
    """The sequence ended with an error; ``status`` is the HTTP status to report."""

    message: str
    status: int = 500
    code: str = "internal_error"


@dataclass
class PrefillProgress:
    """The prompt is still being processed; lets streams send keep-alives."""

    done: int
    total: int


EngineEvent = TextDelta | Finished | Failed | PrefillProgress


@dataclass(eq=False)
class GenerationRequest:
    """One sequence to generate. The engine pushes events onto ``events`` via ``loop``."""

    prompt_tokens: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    request_id: str = ""
    cache_salt: str = ""  # prefix-cache namespace (the tenant); "" is the shared one
    enqueued_at: float = field(default_factory=time.monotonic)
    admitted_at: float | None = None  # when it joined the running batch
    cancelled: bool = False

    def push(self, event: EngineEvent) -> None:
        """Thread-safe hand-off to the request's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # loop closed: the client is gone
            self.cancelled = True
