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


def test_fenced_call_objects_are_calls_and_other_fences_stay_text():
    """Qwen2.5-Coder writes its calls as ```json blocks; code blocks must stream as text."""
    fenced = ('```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n'
              '  }\n}\n```\n```json\n{"name": "add", "arguments": {"a": 1}}\n```')
    for pieces in (chars(fenced), [fenced]):
        events, reason, calls = run(pieces)
        assert [c.name for c in calls] == ["get_weather", "add"] and reason == "tool_calls"
        assert args_of(events, 0).startswith("{") and args_of(events, 1) == '{"a": 1}'
        assert json.loads(args_of(events, 0)) == {"city": "Paris"}
        assert text_of(events) == ""
    code = "Here:\n```python\nprint('{}')\n```\nand ```json\n[1, 2]\n``` done `x`"
    for pieces in (chars(code), [code]):
        events, reason, calls = run(pieces)
        assert text_of(events) == code and calls == [] and reason == "stop"
    partial = run(chars("```json\n{\"name\": \"get_weather\", \"argu"), reason="length")
    assert partial[2] == [] and partial[1] == "length"


def test_mistral_style_calls_without_an_end_marker_run_to_the_end():
    from mlx_lm.tool_parsers import mistral

    class Tok:
        tool_call_start, tool_call_end = mistral.tool_call_start, mistral.tool_call_end
        tool_parser = staticmethod(mistral.parse_tool_call)

    stream = ToolCallStream(0, "auto", NAMES, Tok(), [])
    events = stream.feed('Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}')
    owed, reason, _ = stream.finish("stop")
    assert text_of(events + owed) == "Sure." and reason == "tool_calls"
    assert [c.name for c in stream.calls] == ["get_weather"]
    assert json.loads(stream.calls[0].arguments) == {"city": "Oslo"}


def test_bare_call_objects_one_after_another_are_calls():
    output = ('{"name": "get_weather", "arguments": {"city": "Paris"}},\n'
              '{"name": "add", "arguments": {"a": 1}}')
    events, reason, calls = run(chars(output))
    assert [c.name for c in calls] == ["get_weather", "add"] and reason == "tool_calls"
    assert json.loads(args_of(events, 1)) == {"a": 1} and text_of(events) == ""
    for text in ('{"name": "get_weather", "arguments": {}} and more', '{"a": 1}, {"b": 2}',
                 '{"name": "unknown", "arguments": {}}'):
        events, reason, calls = run([text])
        assert calls == [] and text_of(events) == text and reason == "stop"
