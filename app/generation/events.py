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
class ToolCallStart:
    """A tool call begins: its function name is known (arguments follow as deltas)."""

    choice: int
    index: int  # the call's place among this choice's calls
    id: str
    name: str


@dataclass
class ToolCallDelta:
    """More of a call's arguments, as JSON text; the deltas add up to the arguments."""

    choice: int
    index: int
    arguments: str


@dataclass
class ToolCallEnd:
    """A call is complete (its arguments are the concatenated deltas)."""

    choice: int
    index: int
    call: ToolCall


@dataclass
class ChoiceEnd:
    """A choice is over; ``logprobs`` covers tokens whose text was never sent (tool-call
    markup, or text held back at the end)."""

    choice: int
    finish_reason: str  # stop | length | tool_calls | content_filter
    logprobs: list[TokenLogprob] | None = None
    stop_sequence: str | None = None  # the stop string that ended it (finish_reason "stop")


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
    "ToolCallDelta", "ToolCallEnd", "ToolCallStart", "Usage",
]

OutputEvent = (
    TextOut | ToolCallStart | ToolCallDelta | ToolCallEnd | ChoiceEnd | Usage | KeepAlive
)
