"""Tool calling on the tiny random llama: forced calls must be valid whatever the weights."""

from __future__ import annotations

import json

import jsonschema
from fastapi.testclient import TestClient

from app.generation.request import FunctionTool
from app.generation.tools import ToolPlan, parse_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"enum": ["c", "f"]}, "days": {"enum": [1, 2, 3]}},
            "required": ["unit", "days"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"enum": [1, 2]}, "b": {"enum": [3, 4]}},
            "required": ["a", "b"],
        },
    },
}


def ask(client: TestClient, **body):
    payload = {"model": "default", "messages": [{"role": "user", "content": "Weather?"}],
               "max_tokens": 64, "tools": [WEATHER, ADD], **body}
    return client.post("/v1/chat/completions", json=payload)


def _check_call(call: dict, allowed: set[str]) -> None:
    assert call["id"].startswith("call_") and call["type"] == "function"
    name = call["function"]["name"]
    assert name in allowed
    schema = {"get_weather": WEATHER, "add": ADD}[name]["function"]["parameters"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)


def test_required_gives_a_valid_call(client: TestClient):
    resp = ask(client, tool_choice="required", temperature=1.0, seed=5, n=2)
    assert resp.status_code == 200, resp.text
    for choice in resp.json()["choices"]:
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        _check_call(choice["message"]["tool_calls"][0], {"get_weather", "add"})


def test_named_choice_calls_that_function_and_streams_deltas(client: TestClient):
    named = {"type": "function", "function": {"name": "add"}}
    body = ask(client, tool_choice=named, temperature=0).json()
    _check_call(body["choices"][0]["message"]["tool_calls"][0], {"add"})
    resp = ask(client, tool_choice=named, temperature=0, stream=True)
    events = [json.loads(ln[6:]) for ln in resp.text.splitlines()
              if ln.startswith("data: ") and ln != "data: [DONE]"]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    assert not any(d.get("content") for d in deltas)  # the call's JSON is never content
    # OpenAI's shape: id, type and name first, then the arguments in fragments
    first, rest = calls[0], calls[1:]
    assert first["index"] == 0 and first["function"] == {"name": "add", "arguments": ""}
    assert len(rest) > 1 and all(set(c) == {"index", "function"} for c in rest)
    arguments = "".join(c["function"]["arguments"] for c in rest)
    _check_call({**first, "function": {"name": "add", "arguments": arguments}}, {"add"})
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_history_with_tool_calls_renders(client: TestClient):
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"unit": "c", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]
    resp = ask(client, messages=messages, max_tokens=4)
    assert resp.status_code == 200, resp.text


def test_bad_tool_requests_are_400(client: TestClient):
    cases = [
        {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
        {"tool_choice": "sometimes"},
        {"tools": [], "tool_choice": "required"},
        {"tools": [WEATHER, WEATHER]},
        {"tools": [{"type": "function", "function": {"name": "x", "parameters": {"type": 7}}}]},
        {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
    ]
    for extra in cases:
        resp = ask(client, **extra)
        assert resp.status_code == 400, (extra, resp.text)
    resp = client.post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "x"}],
        "tool_choice": "required"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "tool_choice"


def test_auto_mode_parses_tagged_and_bare_calls():
    tools = [FunctionTool(**WEATHER["function"]), FunctionTool(**ADD["function"])]
    plan = ToolPlan("auto", tools, {"get_weather", "add"})
    tagged = 'Sure.<tool_call>{"name": "add", "arguments": {"a": 1, "b": 3}}</tool_call>'
    calls = parse_calls(tagged, plan, tokenizer=None)
    assert calls and calls[0].name == "add"
    assert json.loads(calls[0].arguments) == {"a": 1, "b": 3}
    two = ('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 4}}</tool_call>'
           '<tool_call>{"name": "get_weather", "arguments": {"unit": "f", "days": 2}}</tool_call>')
    assert [c.name for c in parse_calls(two, plan, None)] == ["add", "get_weather"]
    bare = '{"name": "get_weather", "arguments": {"unit": "c", "days": 3}}'
    assert parse_calls(bare, plan, None)[0].name == "get_weather"
    assert parse_calls("It is sunny in Paris.", plan, None) is None
    spaced = '{"name": "add", "arguments": {"a": 2, "b": 3}}'
    assert parse_calls(f"<tool_call>\n{spaced}\n</tool_call>", plan, None)[0].name == "add"
    unknown = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    assert parse_calls(unknown, plan, None) is None


def test_a_forced_call_cut_short_is_neither_content_nor_a_call(client: TestClient):
    named = {"type": "function", "function": {"name": "add"}}
    for choice in ("required", named):
        body = ask(client, tool_choice=choice, max_tokens=1).json()
        message = body["choices"][0]["message"]
        assert message["content"] is None and "tool_calls" not in message, message
        assert body["choices"][0]["finish_reason"] == "length"
        resp = ask(client, tool_choice=choice, max_tokens=3, stream=True)
        deltas = [json.loads(ln[6:])["choices"][0]["delta"] for ln in resp.text.splitlines()
                  if ln.startswith("data: {")]
        assert not any(d.get("content") for d in deltas), deltas
