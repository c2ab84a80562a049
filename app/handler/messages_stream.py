"""Anthropic's event stream for one run: ``message_start``, ``ping``, then per content
block ``content_block_start`` / ``content_block_delta`` (``text_delta``,
``input_json_delta``) / ``content_block_stop``, then ``message_delta`` (stop reason,
usage) and ``message_stop`` (with ``htdi``). Text and tool calls become blocks in the
order the model writes them. A ``ping`` goes out while a prompt is prefilled and after
every ``PING_EVERY_S`` seconds without an event, as Anthropic's own streams do. Each event
is a dict whose ``type`` is its SSE event name (the API layer's named framing); an error
after the first byte is the stream's last event, ``error``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from app.core.context import RequestContext
from app.core.errors import APIError
from app.generation import events as ev
from app.generation.core import Run
from app.handler.anthropic_errors import anthropic_envelope
from app.handler.heartbeat import BEAT, with_heartbeat
from app.handler.messages import message_id, stop_reason, tool_use_id, usage_dict

PING_EVERY_S = 10.0


def _event(name: str, **data: Any) -> dict[str, Any]:
    return {"type": name, **data}


class _Blocks:
    """Which content block is open; a new kind of content closes the open one."""

    def __init__(self) -> None:
        self.count = 0
        self.open: str | None = None  # "text", or "call:<index>" for a tool call

    def start(self, key: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        out = self.stop()
        self.open = key
        out.append(_event("content_block_start", index=self.count, content_block=block))
        return out

    def delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return _event("content_block_delta", index=self.count, delta=delta)

    def stop(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        self.open = None
        self.count += 1
        return [_event("content_block_stop", index=self.count - 1)]


async def message_events(
    run: Run, ctx: RequestContext, model: str, single_call: bool
) -> AsyncIterator[Any]:
    """The run as named events; the run is closed at the end."""
    blocks = _Blocks()
    ending: ev.ChoiceEnd | None = None
    try:
        prompt = sum(len(p) for p in run.prompts)
        yield _event("message_start", message={
            "id": message_id(), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        })
        yield _event("ping")
        async for event in with_heartbeat(run.events(), PING_EVERY_S):
            if isinstance(event, ev.TextOut):
                if blocks.open != "text":
                    for out in blocks.start("text", {"type": "text", "text": ""}):
                        yield out
                yield blocks.delta({"type": "text_delta", "text": event.text})
            elif isinstance(event, ev.ToolCallStart) and not (single_call and event.index):
                block = {"type": "tool_use", "id": tool_use_id(event.id), "name": event.name,
                         "input": {}}
                for out in blocks.start(f"call:{event.index}", block):
                    yield out
            elif isinstance(event, ev.ToolCallDelta) and blocks.open == f"call:{event.index}":
                yield blocks.delta({"type": "input_json_delta", "partial_json": event.arguments})
            elif isinstance(event, ev.ChoiceEnd):
                ending = event
            elif isinstance(event, ev.Usage):
                for out in blocks.stop():
                    yield out
                reason = stop_reason(ending and ending.finish_reason,
                                     ending and ending.stop_sequence)
                yield _event("message_delta",
                             delta={"stop_reason": reason,
                                    "stop_sequence": ending and ending.stop_sequence},
                             usage=usage_dict(event))
                yield _event("message_stop", htdi=ctx.htdi())
            elif event is ev.KEEP_ALIVE or event is BEAT:
                yield _event("ping")
    except APIError as exc:
        yield anthropic_envelope(exc, ctx.htdi())
    finally:
        run.close()
