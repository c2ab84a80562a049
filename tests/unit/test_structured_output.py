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
