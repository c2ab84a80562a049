"""Plain data passed between the handler (event loop) and the engine (worker thread)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any


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
    grammar: Any = None  # CompiledGrammar (or llguidance grammar text) the output must follow
    # (think start id, think end id, open at the prompt's end): the grammar applies after it
    think: tuple[int, int, bool] | None = None
    speculative: bool = True  # may this sequence decode with prompt-lookup drafts
    prompt_logprobs: int | None = None  # None: off; k >= 0: each prompt token plus the top k


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
    tokens: int = 1  # generated tokens this text completes (text may wait for later ones)
    step: int = 0  # the engine step that produced it (speculation returns several a step)


@dataclass
class PromptLogprobs:
    """The prompt's token logprobs (``None`` for the first token), sent once its prefill is
    done, before any text."""

    logprobs: list[TokenLogprob | None]


@dataclass
class Finished:
    """The last event of a sequence."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None  # of tokens whose text was never emitted
    stop_sequence: str | None = None  # the stop string that ended it (finish_reason "stop")


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


EngineEvent = TextDelta | Finished | Failed | PrefillProgress | PromptLogprobs


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
    group: int = 0  # the API request it belongs to (app.engine.lm.admission: fairness)
    client: str = ""  # who sent it (X-House-ID); "" when unknown

    def push(self, event: EngineEvent) -> None:
        """Thread-safe hand-off to the request's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # loop closed: the client is gone
            self.cancelled = True
