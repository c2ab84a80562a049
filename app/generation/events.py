"""The dialect-neutral result stream a :class:`~app.generation.core.Run` yields.

Choices are numbered across prompts: choice ``p * n + i`` is choice ``i`` of prompt ``p``.
A dialect maps these events onto its own JSON or SSE; it never sees engine events.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.lm.types import TokenLogprob  # dialects format it; re-exported here
from app.generation.request import ToolCall


@dataclass
class TextOut:
    """Answer text for one choice, with the logprobs of the tokens it came from if asked."""

    choice: int
    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass
class ToolCallsOut:
    """The tool calls one choice's answer consists of (its text is never shown)."""

    choice: int
    calls: list[ToolCall]


@dataclass
class ChoiceEnd:
    """A choice is over; ``logprobs`` covers tokens whose text was never sent."""

    choice: int
    finish_reason: str  # stop | length | tool_calls | content_filter
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Usage:
    """The last event of a run: token counts over every prompt and choice."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class KeepAlive:
    """Nothing to say yet (a long prompt is being prefilled); streams send a comment."""


KEEP_ALIVE = KeepAlive()

__all__ = [
    "KEEP_ALIVE", "ChoiceEnd", "KeepAlive", "OutputEvent", "TextOut", "TokenLogprob",
    "ToolCallsOut", "Usage",
]

OutputEvent = TextOut | ToolCallsOut | ChoiceEnd | Usage | KeepAlive
