"""app.generation.tool_stream: tool calls recognised while they are generated."""

from __future__ import annotations

import json

from app.generation.events import TextOut, ToolCallDelta, ToolCallEnd, ToolCallStart
from app.generation.tool_stream import JsonValueEnd, ToolCallStream

NAMES = {"get_weather", "add"}


def run(pieces: list[str], mode: str = "auto", reason: str = "stop"):
    stream = ToolCallStream(0, mode, NAMES)
    events = [e for piece in pieces for e in stream.feed(piece)]
    owed, reason, _ = stream.finish(reason)
    return events + owed, reason, stream.calls


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextOut))


def args_of(events, index: int = 0) -> str:
    return "".join(e.arguments for e in events
                   if isinstance(e, ToolCallDelta) and e.index == index)


def chars(text: str) -> list[str]:
    return list(text)  # one character per delta: the hardest split


def test_forced_call_streams_name_first_then_argument_fragments():
    call = '{"name":"add","arguments":{"a":1,"b":{"c":[2,"}"]}}}'
    events, reason, calls = run(chars(call), mode="required")
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert len(starts) == 1 and starts[0].name == "add"
    assert events.index(starts[0]) < events.index(
        next(e for e in events if isinstance(e, ToolCallDelta)))
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len(deltas) > 5  # fragments, not one piece
    assert json.loads(args_of(events)) == {"a": 1, "b": {"c": [2, "}"]}}
    assert reason == "tool_calls" and calls[0].arguments == args_of(events)
    assert text_of(events) == ""


def test_auto_streams_text_and_never_shows_markup_split_anywhere():
    output = ('Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": '
              '"Paris"}}\n</tool_call>\n<tool_call>{"name": "add", "arguments": {"a": 1}}'
              '</tool_call>')
    for pieces in (chars(output), [output], [output[:20], output[20:45], output[45:]]):
        events, reason, calls = run(pieces)
        assert text_of(events) == "Let me check. "
        assert [c.name for c in calls] == ["get_weather", "add"]
        assert json.loads(args_of(events, 0)) == {"city": "Paris"}
        assert json.loads(args_of(events, 1)) == {"a": 1}
        assert reason == "tool_calls"
        assert [type(e) for e in events].count(ToolCallEnd) == 2


def test_text_that_only_looks_like_a_marker_is_text():
    events, reason, calls = run(chars("a <tool and <b> 3 < 4"))
    assert text_of(events) == "a <tool and <b> 3 < 4" and not calls and reason == "stop"


def test_bare_json_call_and_bare_json_answer():
    events, reason, calls = run(chars('{"name": "add", "arguments": {"a": 2}}'))
    assert calls[0].name == "add" and reason == "tool_calls" and text_of(events) == ""
    events, reason, calls = run(chars('{"city": "Paris"}'))
    assert text_of(events) == '{"city": "Paris"}' and not calls and reason == "stop"


def test_a_call_to_a_function_not_offered_is_dropped_not_shown():
    events, reason, calls = run(['<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'])
    assert not calls and text_of(events) == "" and reason == "stop"


def test_forced_call_cut_by_length_has_no_finished_call():
    events, reason, calls = run(chars('{"name":"add","arguments":{"a":'), "required", "length")
    assert not calls and reason == "length" and text_of(events) == ""
    assert not any(isinstance(e, ToolCallEnd) for e in events)


def test_json_value_end_handles_strings_escapes_and_scalars():
    end = JsonValueEnd()
    assert end.scan('{"a": "x\\"}"') is None
    assert end.scan(', "b": [1, 2]} tail') == len(', "b": [1, 2]}')
    assert JsonValueEnd().scan("  42}") == 4
    assert JsonValueEnd().scan('"s"') == 3
