"""Grammar-constrained decoding: even a random-weight model must emit valid JSON."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest
from fastapi.testclient import TestClient

FINITE_SCHEMA = {
    "type": "object",
    "properties": {
        "c": {"enum": ["red", "green", "blue"]},
        "ok": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 9},
        "p": {
            "type": "object",
            "properties": {"x": {"enum": [1, 2, 3]}, "y": {"type": "boolean"}},
            "required": ["x", "y"],
            "additionalProperties": False,
        },
    },
    "required": ["c", "ok", "n", "p"],
    "additionalProperties": False,
}


def constrained(client: TestClient, schema=FINITE_SCHEMA, **body):
    return client.post(
        "/v1/chat/completions",
        json={
            "model": "default",
            "messages": [{"role": "user", "content": "Answer in JSON."}],
            "max_tokens": 64,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            },
            **body,
        },
    )


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_random_model_output_validates_against_schema(client: TestClient, temperature):
    resp = constrained(client, temperature=temperature, seed=3, n=3)
    assert resp.status_code == 200, resp.text
    for choice in resp.json()["choices"]:
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), FINITE_SCHEMA)


def test_streamed_constrained_output_validates(client: TestClient):
    resp = constrained(client, temperature=1.0, stream=True)
    lines = [ln[6:] for ln in resp.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(ln) for ln in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    jsonschema.validate(json.loads(text), FINITE_SCHEMA)


def test_invalid_schemas_are_400_not_500(client: TestClient):
    for schema in [{"type": "no-such-type"}, {"type": "object", "properties": 5},
                   {"$ref": "#/definitions/missing"}]:
        resp = constrained(client, schema=schema)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"].startswith("response_format")
    bad = client.post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}})
    assert bad.status_code == 400
    assert client.get("/health").status_code == 200


def test_constrained_and_free_requests_share_a_batch(client: TestClient):
    def one(i: int):
        if i % 2:
            return "free", client.post("/v1/chat/completions", json={
                "model": "default", "messages": [{"role": "user", "content": f"Hi {i}"}],
                "max_tokens": 12, "temperature": 0})
        return "json", constrained(client, temperature=1.0, seed=i)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    engine = client.app.state.manager.models["tiny"].engine
    assert engine.stats.max_running >= 2
    for kind, resp in results:
        assert resp.status_code == 200, resp.text
        choice = resp.json()["choices"][0]
        if kind == "json":
            jsonschema.validate(json.loads(choice["message"]["content"]), FINITE_SCHEMA)
        else:
            assert choice["finish_reason"] == "length"


def test_completed_grammar_ends_the_choice_even_with_ignore_eos(client: TestClient):
    """Issue 23 item 12: nothing follows the JSON, whatever ignore_eos says."""
    resp = constrained(client, temperature=1.0, seed=5, ignore_eos=True)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), FINITE_SCHEMA)
OPEN_SCHEMA = {  # nothing bounded: strings, numbers, integers, arrays, free objects
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "population": {"type": "integer"},
        "area": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object", "properties": {"note": {"type": "string"}},
                 "required": ["note"]},
    },
    "required": ["city", "population", "area", "tags", "meta"],
}


CITY_SCHEMA = {"type": "object", "required": ["city", "population"],
               "properties": {"city": {"type": "string"}, "population": {"type": "integer"}}}


# With this character-level vocabulary, closing OPEN_SCHEMA from "{" takes 60 tokens.
@pytest.mark.parametrize(("schema", "max_tokens"), [(OPEN_SCHEMA, 64), (CITY_SCHEMA, 40)])
def test_unbounded_schema_still_closes_within_max_tokens(client: TestClient, schema, max_tokens):
    """A random model never stops a string or a number by itself: the closing steer must
    end every choice's JSON inside the budget, sampled and greedy alike."""
    for body in ({"temperature": 1.0, "seed": 5, "n": 3}, {"temperature": 0.0}):
        resp = constrained(client, schema=schema, max_tokens=max_tokens, **body)
        assert resp.status_code == 200, resp.text
        for choice in resp.json()["choices"]:
            value = json.loads(choice["message"]["content"])
            jsonschema.validate(value, schema)
            assert choice["finish_reason"] == "stop"
        assert resp.json()["usage"]["completion_tokens"] <= max_tokens * len(
            resp.json()["choices"]
        )


def test_closing_impossible_within_the_budget_stays_length(client: TestClient):
    resp = constrained(client, schema=OPEN_SCHEMA, max_tokens=3, temperature=0.0)
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "length"


def test_forced_tool_call_arguments_close_too(client: TestClient):
    tool = {"type": "function", "function": {"name": "lookup", "parameters": CITY_SCHEMA}}
    resp = client.post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "Look it up."}],
        "tools": [tool], "tool_choice": "required", "max_tokens": 64, "temperature": 1.0,
        "seed": 2})
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    call = choice["message"]["tool_calls"][0]["function"]
    jsonschema.validate(json.loads(call["arguments"]), CITY_SCHEMA)


def test_integers_without_bounds_are_limited_to_18_digits():
    from app.engine.lm.grammar import INT_LIMIT, bounded_schema

    schema = {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": ["integer", "null"], "maximum": 5},
        "c": {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}}}
    out = bounded_schema(schema)
    assert (out["properties"]["a"]["minimum"], out["properties"]["a"]["maximum"]) == (
        -INT_LIMIT, INT_LIMIT)
    assert "minimum" not in out["properties"]["b"]  # the client's bound stands
    assert out["properties"]["c"]["items"]["anyOf"][0]["maximum"] == INT_LIMIT
    assert "minimum" not in out["properties"]["c"]["items"]["anyOf"][1]
    assert "minimum" not in schema["properties"]["a"]  # the request's schema is not changed
