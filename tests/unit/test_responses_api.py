"""/v1/responses on the tiny random llama, through the official openai SDK."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import pytest
from fastapi.testclient import TestClient
from openai import BadRequestError, NotFoundError, OpenAI

from app.config import Settings
from app.lifecycle.registry import ModelRegistry, ModelSpec
from app.main import create_app

ADD = {"type": "function", "name": "add", "description": "Add two numbers",
       "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                        "b": {"type": "integer"}},
                      "required": ["a", "b"]}}


def _app(tiny_llama_dir: Path, cache: Path) -> TestClient:
    registry = ModelRegistry([ModelSpec(
        id="tiny", source=str(tiny_llama_dir), family="llama", context_length=1024,
        aliases=["default"], limits={"max_tokens": 64}, preload=True)])
    return TestClient(create_app(Settings(cache_dir=cache), registry))


def _ready(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("responses-cache")


@pytest.fixture(scope="module")
def http(tiny_llama_dir: Path, cache: Path):
    with _app(tiny_llama_dir, cache) as client:
        _ready(client)
        yield client


@pytest.fixture(scope="module")
def sdk(http: TestClient) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)


def test_create_text_and_usage(sdk: OpenAI, http: TestClient):
    resp = sdk.responses.create(model="default", input="Say hi", max_output_tokens=8,
                                temperature=0)
    assert resp.id.startswith("resp_") and resp.object == "response"
    assert resp.status in ("completed", "incomplete")
    message = resp.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert resp.output_text == message.content[0].text and resp.output_text
    assert resp.usage.input_tokens > 0 and 0 < resp.usage.output_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    raw = http.post("/v1/responses", json={"model": "default", "input": "Say hi",
                                           "max_output_tokens": 4},
                    headers={"X-House-ID": "house-1"}).json()
    assert raw["htdi"]["houseId"] == "house-1" and raw["htdi"]["model"] == "tiny"


def test_max_output_tokens_gives_an_incomplete_response(sdk: OpenAI):
    resp = sdk.responses.create(model="default", input="Count to one hundred",
                                max_output_tokens=2, temperature=0)
    assert resp.status == "incomplete"
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output[0].status == "incomplete"


def test_json_schema_output_is_enforced(sdk: OpenAI):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}},
              "required": ["ok"], "additionalProperties": False}
    resp = sdk.responses.create(
        model="default", input="Answer in JSON", temperature=0.7, max_output_tokens=32,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema}})
    jsonschema.validate(json.loads(resp.output_text), schema)


def test_function_call_round_trip_over_stored_responses(sdk: OpenAI):
    first = sdk.responses.create(model="default", input="What is 2 + 3?", tools=[ADD],
                                 tool_choice="required", temperature=0)
    call = first.output[-1]
    assert call.type == "function_call" and call.name == "add"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), ADD["parameters"])
    second = sdk.responses.create(
        model="default", previous_response_id=first.id, tools=[ADD], max_output_tokens=8,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "5"}])
    assert second.status in ("completed", "incomplete")
    assert second.output[0].type == "message"
    assert second.usage.input_tokens > first.usage.input_tokens


def test_three_chained_turns_reuse_the_prefix_cache(sdk: OpenAI):
    turn = sdk.responses.create(model="default", input="Tell me about the sea.",
                                max_output_tokens=6, temperature=0)
    sizes = [turn.usage.input_tokens]
    for question in ("And the sky?", "And the forest?"):
        turn = sdk.responses.create(model="default", input=question, max_output_tokens=6,
                                    previous_response_id=turn.id, temperature=0)
        # the whole previous turn's prompt comes from the cache (template edges aside)
        assert turn.usage.input_tokens_details.cached_tokens >= sizes[-1] - 2
        sizes.append(turn.usage.input_tokens)
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


def test_stream_events_in_order(sdk: OpenAI):
    with sdk.responses.stream(model="default", input="Hello there", max_output_tokens=6,
                              temperature=0) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert "response.output_text.delta" in kinds
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done",
                            "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # response.incomplete when max_output_tokens cut it
    assert final.output_text == text and final.id == events[0].response.id


def test_stream_forced_function_call_arguments_in_fragments(http: TestClient):
    body = {"model": "default", "input": "Add 1 and 2", "tools": [ADD],
            "tool_choice": {"type": "function", "name": "add"}, "stream": True}
    with http.stream("POST", "/v1/responses", json=body) as resp:
        lines = list(resp.iter_lines())
    names = [ln[7:] for ln in lines if ln.startswith("event: ")]
    events = [json.loads(ln[6:]) for ln in lines if ln.startswith("data: ")]
    assert names == [e["type"] for e in events]
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert len(deltas) > 1 and "".join(deltas) == done["arguments"]
    assert events[-1]["response"]["output"][0]["arguments"] == done["arguments"]
    assert "htdi" in events[-1]["response"]


def test_retrieve_delete_and_input_items(sdk: OpenAI):
    resp = sdk.responses.create(model="default", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "One"}]},
        {"role": "assistant", "content": "Two"},
        {"role": "user", "content": "Three"}], max_output_tokens=4)
    assert sdk.responses.retrieve(resp.id).output_text == resp.output_text
    items = sdk.responses.input_items.list(resp.id, order="asc")
    assert [i.role for i in items.data] == ["user", "assistant", "user"]
    assert all(i.id.startswith("msg_") for i in items.data)
    assert sdk.responses.delete(resp.id) is None
    with pytest.raises(NotFoundError):
        sdk.responses.retrieve(resp.id)


def test_store_false_is_not_kept(sdk: OpenAI):
    resp = sdk.responses.create(model="default", input="hi", store=False, max_output_tokens=2)
    assert resp.store is False
    with pytest.raises(NotFoundError):
        sdk.responses.retrieve(resp.id)


def test_stored_responses_survive_a_restart(tiny_llama_dir: Path, tmp_path: Path):
    with _app(tiny_llama_dir, tmp_path) as first:
        _ready(first)
        made = first.post("/v1/responses", json={"model": "default", "input": "Remember me",
                                                 "max_output_tokens": 4}).json()
    with _app(tiny_llama_dir, tmp_path) as second:
        _ready(second)
        assert second.get(f"/v1/responses/{made['id']}").json()["output"] == made["output"]
        follow = second.post("/v1/responses", json={
            "model": "default", "input": "Again", "previous_response_id": made["id"],
            "max_output_tokens": 2})
        assert follow.status_code == 200
        assert follow.json()["usage"]["input_tokens"] > made["usage"]["input_tokens"]


def test_input_tokens_counts_what_create_would_use(sdk: OpenAI):
    counted = sdk.responses.input_tokens.count(model="default", input="How many tokens?",
                                               instructions="Be exact.")
    made = sdk.responses.create(model="default", input="How many tokens?",
                                instructions="Be exact.", max_output_tokens=1)
    assert counted.input_tokens == made.usage.input_tokens > 0


def test_truncation_auto_drops_the_oldest_turns(http: TestClient):
    long_turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 150}
                  for i in range(9)]
    body = {"model": "default", "input": long_turns, "max_output_tokens": 4}
    refused = http.post("/v1/responses", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    assert refused.json()["error"]["param"] == "input"
    fitted = http.post("/v1/responses", json={**body, "truncation": "auto"})
    assert fitted.status_code == 200, fitted.text
    assert fitted.json()["usage"]["input_tokens"] <= 1024 - 4


@pytest.mark.parametrize(("extra", "param"), [
    ({"background": True}, "background"),
    ({"tools": [{"type": "function", "name": "bad name"}]}, "tools[0]"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"previous_response_id": "resp_missing"}, "previous_response_id"),
    ({"input": [{"type": "computer_call", "id": "x"}]}, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0]"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ({"max_output_tokens": 10_000}, "max_output_tokens"),
])
def test_refusals_name_the_field(http: TestClient, extra: dict, param: str):
    resp = http.post("/v1/responses", json={"model": "default", "input": "hi", **extra})
    assert resp.status_code in (400, 404), resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"]
    assert resp.json()["htdi"]["requestId"] == resp.headers["x-request-id"]


def test_unknown_field_and_unknown_id(sdk: OpenAI, http: TestClient):
    resp = http.post("/v1/responses", json={"model": "default", "input": "hi", "bogus": 1})
    assert resp.status_code == 400
    with pytest.raises(NotFoundError):
        sdk.responses.retrieve("resp_nope")
    with pytest.raises(BadRequestError):
        sdk.responses.create(model="default", input=[])


def test_built_in_tools_are_left_out_and_namespaced_tools_called(http: TestClient):
    """What Codex CLI sends: web_search (served by OpenAI only) and a namespace group."""
    group = {"type": "namespace", "name": "math", "description": "Arithmetic",
             "tools": [ADD]}
    body = {"model": "default", "input": "Add 2 and 2", "client_metadata": {"k": "v"},
            "tools": [{"type": "web_search", "external_web_access": True}, group],
            "tool_choice": {"type": "function", "name": "add"}, "store": False,
            "include": ["reasoning.encrypted_content"], "reasoning": {"summary": "auto"}}
    resp = http.post("/v1/responses", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert [t["type"] for t in out["tools"]] == ["namespace"]
    call = out["output"][-1]
    assert call["type"] == "function_call" and call["name"] == "add"
    assert call["namespace"] == "math"
