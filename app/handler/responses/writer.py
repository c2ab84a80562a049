"""The neutral result stream → a Responses API object and its typed stream events.

One :class:`ResponseWriter` serves both ways of answering: a streamed response sends the
events :meth:`ResponseWriter.feed` returns as they come, a plain one drops them and sends
:meth:`ResponseWriter.response` at the end. So both carry the same output items, ids and
usage.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from app.core.errors import APIError
from app.generation.events import (
    ChoiceEnd,
    OutputEvent,
    TextOut,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from app.handler.logprobs import TokenTexts


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_object(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


class ResponseWriter:
    """Builds one response's output items from neutral events, and its stream events."""

    def __init__(self, base: dict[str, Any], *, logprobs: TokenTexts | None = None,
                 max_calls: int | None = None,
                 namespace_of: dict[str, str] | None = None) -> None:
        self.base = base  # the response object's request-derived fields
        self.output: list[dict[str, Any]] = []
        self.logprobs = logprobs
        self.max_calls = max_calls
        self.namespace_of = namespace_of or {}
        self.sequence = 0
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self._message: dict[str, Any] | None = None  # the open message item
        self._calls: dict[int, dict[str, Any]] = {}  # open function calls by call index
        self._dropped: set[int] = set()  # calls beyond max_calls (parallel_tool_calls false)

    # -- the response object ------------------------------------------------------------
    def response(self, status: str, *, error: APIError | None = None) -> dict[str, Any]:
        out = {**self.base, "status": status, "output": list(self.output)}
        if status != "in_progress":
            out["completed_at"] = int(time.time()) if status == "completed" else None
        if status == "incomplete":
            out["incomplete_details"] = {"reason": "max_output_tokens"}
        if error is not None:
            out["error"] = {"code": error.code or error.type, "message": error.message}
        out["usage"] = usage_object(self.usage) if self.usage is not None else None
        return out

    def status(self) -> str:
        return "incomplete" if self.finish_reason == "length" else "completed"

    # -- events -------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        snapshot = self.response("in_progress")
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def feed(self, event: OutputEvent) -> list[dict[str, Any]]:
        if isinstance(event, TextOut):
            return self._text(event)
        if isinstance(event, ToolCallStart):
            return self._call_start(event)
        if isinstance(event, ToolCallDelta) and event.index in self._calls:
            item = self._calls[event.index]
            item["arguments"] += event.arguments
            return [self._event("response.function_call_arguments.delta", item_id=item["id"],
                                output_index=self.output.index(item), delta=event.arguments)]
        if isinstance(event, ToolCallEnd) and event.index in self._calls:
            return self._call_done(self._calls.pop(event.index), "completed")
        if isinstance(event, ChoiceEnd):
            self.finish_reason = event.finish_reason
        elif isinstance(event, Usage):
            self.usage = event
        return []

    def finish(self, final: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Close open items; the last event carries the whole response (plus ``final``)."""
        events = self._close_message()
        for index in sorted(self._calls):
            events += self._call_done(self._calls.pop(index), "incomplete")
        status = self.status()
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return events + [self._event(kind, response={**self.response(status), **(final or {})})]

    def fail(self, error: APIError, final: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """A failure after the stream began: an ``error`` event, then ``response.failed``."""
        events = [self._event("error", code=error.code or error.type, message=error.message,
                              param=error.param)]
        response = {**self.response("failed", error=error), **(final or {})}
        return events + [self._event("response.failed", response=response)]

    # -- message items --------------------------------------------------------------------
    def _text(self, event: TextOut) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._message is None:
            self._message = {"id": new_id("msg"), "type": "message", "status": "in_progress",
                             "role": "assistant", "content": []}
            self.output.append(self._message)
            events.append(self._event("response.output_item.added",
                                      output_index=len(self.output) - 1,
                                      item={**self._message, "content": []}))
            part = self._part("")
            self._message["content"].append(part)
            events.append(self._event("response.content_part.added", **self._where(),
                                      part=self._part("")))
        part = self._message["content"][0]
        part["text"] += event.text
        logprobs = []
        if self.logprobs is not None and event.logprobs:
            logprobs = self.logprobs.chat_content(event.logprobs)
            part["logprobs"] += logprobs
        events.append(self._event("response.output_text.delta", **self._where(),
                                  delta=event.text, logprobs=logprobs))
        return events

    def _part(self, text: str) -> dict[str, Any]:
        part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
        if self.logprobs is not None:
            part["logprobs"] = []
        return part

    def _where(self) -> dict[str, Any]:
        assert self._message is not None
        return {"item_id": self._message["id"], "output_index": self.output.index(self._message),
                "content_index": 0}

    def _close_message(self) -> list[dict[str, Any]]:
        if self._message is None:
            return []
        part = self._message["content"][0]
        where = self._where()
        self._message["status"] = "completed" if self.finish_reason != "length" else "incomplete"
        events = [
            self._event("response.output_text.done", **where, text=part["text"],
                        logprobs=part.get("logprobs", [])),
            self._event("response.content_part.done", **where, part=dict(part)),
            self._event("response.output_item.done", output_index=where["output_index"],
                        item=dict(self._message)),
        ]
        self._message = None
        return events

    # -- function calls -------------------------------------------------------------------
    def _call_start(self, event: ToolCallStart) -> list[dict[str, Any]]:
        kept = len(self._calls) + sum(1 for i in self.output if i["type"] == "function_call")
        if self.max_calls is not None and kept >= self.max_calls:
            self._dropped.add(event.index)
            return []
        events = self._close_message()
        item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                "call_id": f"call_{event.id}", "name": event.name, "arguments": ""}
        if event.name in self.namespace_of:
            item["namespace"] = self.namespace_of[event.name]
        self._calls[event.index] = item
        self.output.append(item)
        events.append(self._event("response.output_item.added",
                                  output_index=len(self.output) - 1, item=dict(item)))
        return events

    def _call_done(self, item: dict[str, Any], status: str) -> list[dict[str, Any]]:
        item["status"] = status
        index = self.output.index(item)
        return [
            self._event("response.function_call_arguments.done", item_id=item["id"],
                        output_index=index, name=item["name"], arguments=item["arguments"]),
            self._event("response.output_item.done", output_index=index, item=dict(item)),
        ]
