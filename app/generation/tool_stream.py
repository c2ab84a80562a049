"""Tool calls recognised while a choice is generated, so they stream as they are written.

A :class:`ToolCallStream` sees one choice's text deltas and turns them into answer text and
tool-call events: a call's start as soon as its function name is known, then its arguments'
JSON text in fragments as they are generated, then its end. Markup never reaches the answer.

- Forced calls (``required`` / a named function): the whole output is one
  ``{"name": ..., "arguments": ...}`` object (the grammar guarantees the shape).
- ``auto``: text streams as it comes, except a tail that may be the start of the call
  marker (``<tool_call>``, or the tokenizer's own); a marker opens a call. An output that
  starts with ``{`` may be a bare JSON call and is held until the choice ends. Families
  whose calls are not JSON (mlx-lm's other tool parsers) are parsed whole at their end
  marker and sent as one fragment.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import regex

from app.generation.events import (
    OutputEvent,
    TextOut,
    TokenLogprob,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
)
from app.generation.request import ToolCall

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"

# The head of a call object up to where its arguments' value starts.
_CALL_HEAD = regex.compile(
    r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*', regex.S
)


def new_call_id() -> str:
    """A call's id; each dialect adds its own prefix (``call_``, ``toolu_``…)."""
    return uuid.uuid4().hex[:24]


class JsonValueEnd:
    """Finds where one JSON value ends in text that arrives in pieces."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.started = False
        self.scalar = False

    def scan(self, text: str) -> int | None:
        """Offset in ``text`` just past the value's end, or None if it goes on."""
        for i, ch in enumerate(text):
            if not self.started:
                if ch.isspace():
                    continue
                self.started = True
                self.scalar = ch not in "{[\""
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                    if self.depth == 0:
                        return i + 1
                continue
            if ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                if self.depth == 0:  # a scalar ended by its container's close
                    return i
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
            elif self.scalar and self.depth == 0 and ch == ",":
                return i
        return None


class _JsonCall:
    """One ``{"name": ..., "arguments": ...}`` object being generated."""

    def __init__(self) -> None:
        self.text = ""  # everything fed so far
        self.name: str | None = None
        self.args_from: int | None = None  # where the arguments' value starts in ``text``
        self.args_to: int | None = None  # where it ends, once it has
        self.sent = 0  # how much of the arguments' text went out as fragments
        self.closed_at: int | None = None  # just past the object's closing brace
        self.unusual = False  # not in name-then-arguments form: parse it whole at the end
        self._value = JsonValueEnd()

    def feed(self, text: str) -> None:
        start = len(self.text)
        self.text += text
        if self.unusual or self.closed_at is not None:
            return
        if self.name is None:
            head = _CALL_HEAD.match(self.text, partial=True)
            if head is None:
                self.unusual = True
                return
            if head.partial:
                return
            self.name = _json_string(head.group(1))
            self.args_from = start = head.end()
        if self.args_to is None:
            offset = max(start, self.args_from or 0)
            end = self._value.scan(self.text[offset:])
            if end is None:
                return
            self.args_to = offset + end
            start = self.args_to
        brace = self.text.find("}", max(start, self.args_to))
        if brace >= 0:
            self.closed_at = brace + 1

    def fragment(self) -> str:
        """Arguments' text generated since the last call (the whole value, in the end)."""
        if self.args_from is None or self.unusual:
            return ""
        until = self.args_to if self.args_to is not None else len(self.text)
        piece = self.text[self.args_from + self.sent : until]
        self.sent += len(piece)
        return piece

    @property
    def arguments(self) -> str:
        assert self.args_from is not None
        return self.text[self.args_from : self.args_to or len(self.text)]


def _json_string(body: str) -> str:
    try:
        return json.loads(f'"{body}"')
    except ValueError:
        return body


def parse_whole_call(text: str) -> tuple[str, str] | None:
    """(name, arguments JSON text) of a complete call object, or None."""
    try:
        parsed = json.loads(text.strip())
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str):
        return None
    arguments = parsed.get("arguments", parsed.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return parsed["name"], arguments


class ToolCallStream:
    """One choice's output → answer text and tool-call events (see the module docstring)."""

    def __init__(self, choice: int, mode: str, names: set[str], tokenizer: Any = None,
                 tools: list[dict[str, Any]] | None = None) -> None:
        self.choice = choice
        self.forced = mode in ("required", "named")
        self.names = names
        self.start = getattr(tokenizer, "tool_call_start", None) or TOOL_CALL_START
        self.end = getattr(tokenizer, "tool_call_end", None) or TOOL_CALL_END
        parser = getattr(tokenizer, "tool_parser", None)
        module = getattr(parser, "__module__", "") or ""
        self.family_parser = parser if parser and not module.endswith("json_tools") else None
        self.tools = tools or []
        self.calls: list[ToolCall] = []
        self._pending = ""  # auto mode: text not yet known to be answer text
        self._call: _JsonCall | None = _JsonCall() if self.forced else None
        self._call_id: str | None = None
        self._started = False  # the open call's start went out
        self._markup: str | None = None  # a family-format call's text, parsed at its end
        self._bare = False  # auto mode: the output began with "{" (held to the end)
        self._logprobs: list[TokenLogprob] = []

    def feed(self, text: str, logprobs: list[TokenLogprob] | None = None) -> list[OutputEvent]:
        """Events for newly generated ``text``."""
        self._logprobs += logprobs or []
        if self.forced:
            return self._feed_call(text)
        out: list[OutputEvent] = []
        self._pending += text
        while self._pending:
            if self._in_call():
                out += self._feed_open_call()
                if self._in_call():
                    break
                continue
            if not self.calls and self._pending.lstrip().startswith("{"):
                self._bare = True
            if self._bare:
                break
            marker = self._pending.find(self.start)
            if marker < 0:
                keep = len(self._pending) - _partial_suffix(self._pending, self.start)
                out += self._text(self._pending[:keep])
                self._pending = self._pending[keep:]
                break
            out += self._text(self._pending[:marker])
            self._pending = self._pending[marker + len(self.start):]
            if self.family_parser is not None:
                self._markup = ""
            else:
                self._call = _JsonCall()
        return out

    def finish(self, reason: str) -> tuple[list[OutputEvent], str, list[TokenLogprob]]:
        """Events still owed at the choice's end, its finish reason, unsent logprobs."""
        out: list[OutputEvent] = []
        if self._call is not None:
            if not self.forced:
                self._call.feed(self._pending)
            out += self._close_call()
        elif self._markup is not None:
            out += self._close_markup(self._markup + self._pending)
        elif self._bare:
            parsed = parse_whole_call(self._pending)
            if parsed and parsed[0] in self.names:
                out += self._whole_call(*parsed)
            else:
                out += self._text(self._pending)
        else:
            out += self._text(self._pending)
        self._pending = ""
        if self.calls and reason == "stop":
            reason = "tool_calls"
        return out, reason, self._take_logprobs()

    # -- calls ---------------------------------------------------------------------------
    def _in_call(self) -> bool:
        return self._call is not None or self._markup is not None

    def _feed_open_call(self) -> list[OutputEvent]:
        """Auto mode inside a call: take its text up to the end marker."""
        end = self._pending.find(self.end)
        if end < 0:
            keep = len(self._pending) - _partial_suffix(self._pending, self.end)
            body, self._pending = self._pending[:keep], self._pending[keep:]
        else:
            body, self._pending = self._pending[:end], self._pending[end + len(self.end):]
        if self._markup is not None:
            self._markup += body
            return self._close_markup(self._markup) if end >= 0 else []
        out = self._feed_call(body)
        if end >= 0:
            out += self._close_call()
        return out

    def _feed_call(self, text: str) -> list[OutputEvent]:
        call = self._call
        assert call is not None
        call.feed(text)
        out: list[OutputEvent] = []
        if call.name is not None and not self._started and call.name in self.names:
            self._started = True
            self._call_id = new_call_id()
            out.append(ToolCallStart(self.choice, len(self.calls), self._call_id, call.name))
        if self._started:
            piece = call.fragment()
            if piece:
                out.append(ToolCallDelta(self.choice, len(self.calls), piece))
        return out

    def _close_call(self) -> list[OutputEvent]:
        """The open call ends (end marker, or the choice ended)."""
        call, self._call = self._call, None
        started, self._started = self._started, False
        if call is None:
            return []
        if call.unusual:
            parsed = parse_whole_call(call.text)
            return self._whole_call(*parsed) if parsed and parsed[0] in self.names else []
        if not started:
            return []  # no name yet, or a function the request did not offer
        out: list[OutputEvent] = []
        piece = call.fragment()
        if piece:
            out.append(ToolCallDelta(self.choice, len(self.calls), piece))
        arguments = call.arguments
        if call.closed_at is None and not _parses(arguments):
            return out  # cut short: what went out stays out, but there is no finished call
        assert call.name is not None and self._call_id is not None
        done = ToolCall(self._call_id, call.name, arguments)
        out.append(ToolCallEnd(self.choice, len(self.calls), done))
        self.calls.append(done)
        return out

    def _close_markup(self, body: str) -> list[OutputEvent]:
        """A family-format call is complete: parse it with the family's parser."""
        self._markup = None
        try:
            parsed = self.family_parser(body, self.tools) if self.family_parser else None
        except Exception:  # noqa: BLE001 - text that is not a call is dropped, never shown
            return []
        out: list[OutputEvent] = []
        for item in parsed if isinstance(parsed, list) else [parsed]:
            if isinstance(item, dict) and item.get("name") in self.names:
                arguments = item.get("arguments", {})
                if not isinstance(arguments, str):
                    arguments = json.dumps(arguments, ensure_ascii=False)
                out += self._whole_call(item["name"], arguments)
        return out

    def _whole_call(self, name: str, arguments: str) -> list[OutputEvent]:
        index, call = len(self.calls), ToolCall(new_call_id(), name, arguments)
        self.calls.append(call)
        return [ToolCallStart(self.choice, index, call.id, name),
                ToolCallDelta(self.choice, index, arguments),
                ToolCallEnd(self.choice, index, call)]

    # -- text ----------------------------------------------------------------------------
    def _text(self, text: str) -> list[OutputEvent]:
        if not text or (self.calls and not text.strip()):
            return []  # nothing, or the white space between calls
        return [TextOut(self.choice, text, self._take_logprobs() or None)]

    def _take_logprobs(self) -> list[TokenLogprob]:
        taken, self._logprobs = self._logprobs, []
        return taken


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a start of ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
