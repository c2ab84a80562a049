"""Anthropic's /v1/messages and /v1/messages/count_tokens on the tiny random llama."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.core import errors
from app.lifecycle.registry import ModelRegistry, ModelSpec
from app.main import create_app
from tests.unit.test_tools import ADD as OPENAI_ADD
from tests.unit.test_tools import WEATHER as OPENAI_WEATHER

KEY = "sk-unit-key"
ASK = [{"role": "user", "content": "What is the capital of France?"}]


def _anthropic(tool: dict) -> dict:
    """test_tools' OpenAI function as an Anthropic tool."""
    function = tool["function"]
    return {"name": function["name"], "input_schema": function["parameters"],
            **({"description": function["description"]} if "description" in function else {})}


WEATHER, ADD = _anthropic(OPENAI_WEATHER), _anthropic(OPENAI_ADD)
SCHEMAS = {"get_weather": WEATHER["input_schema"], "add": ADD["input_schema"]}


@pytest.fixture(scope="module")
def api(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny llama behind an API key, with Claude model names mapped onto it."""
    registry = ModelRegistry([ModelSpec(
        id="tiny", source=str(tiny_llama_dir), family="llama", context_length=1024,
        aliases=["default"], limits={"max_tokens": 64}, preload=True,
    )])
    settings = Settings(
        max_body_bytes=64 * 1024, cache_dir=tmp_path_factory.mktemp("cache"), api_key=KEY,
        model_map={"claude-*": "tiny", "haiku": "missing-model"},
    )
    with TestClient(create_app(settings, registry), headers={"x-api-key": KEY}) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client


def create(client: TestClient, **body):
    payload = {"model": "claude-sonnet-4-5", "max_tokens": 12, "messages": ASK,
               "temperature": 0, **body}
    return client.post("/v1/messages", json=payload,
                       headers={"anthropic-version": "2023-06-01",
                                "anthropic-beta": "claude-code-20250219"})


def events_of(response) -> list[tuple[str, dict]]:
    """(event name, data) pairs of an Anthropic stream."""
    assert "[DONE]" not in response.text
    out = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            data = json.loads(lines["data"])
            assert data["type"] == lines["event"]
            out.append((lines["event"], data))
    return out


def assert_error(resp, status: int, kind: str, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert body["request_id"] == resp.headers["x-request-id"] == body["htdi"]["requestId"]
    if param is not None:
        assert body["error"]["param"] == param
    return body


def test_message_shape_usage_ids_and_htdi(api: TestClient):
    resp = create(api, metadata={"user_id": "u-1", "houseId": "h-3"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["id"].startswith("msg_") and body["type"] == "message"
    assert body["role"] == "assistant" and body["model"] == "claude-sonnet-4-5"
    assert body["content"] and body["content"][0]["type"] == "text"
    assert body["stop_reason"] == "max_tokens" and body["stop_sequence"] is None
    usage = body["usage"]
    assert usage["output_tokens"] == 12 and usage["input_tokens"] > 0
    assert body["htdi"]["model"] == "tiny" and body["htdi"]["houseId"] == "h-3"
    assert resp.headers["request-id"] == resp.headers["x-request-id"] == body["htdi"]["requestId"]


def test_stream_events_match_the_message(api: TestClient):
    full = create(api).json()
    resp = create(api, stream=True)
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = events_of(resp)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[2:] == (["content_block_start"] + ["content_block_delta"] * (len(names) - 6)
                         + ["content_block_stop", "message_delta", "message_stop"])
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["usage"]
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == full["content"][0]["text"]
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 12
    assert events[-1][1]["htdi"]["requestId"] == resp.headers["x-request-id"]


def test_stop_sequence_ends_the_answer_and_is_reported(api: TestClient):
    text = create(api, max_tokens=30).json()["content"][0]["text"]
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip(), text
    body = create(api, max_tokens=30, stop_sequences=["never-said", stop]).json()
    assert body["stop_reason"] == "stop_sequence" and body["stop_sequence"] == stop
    assert body["content"][0]["text"] == text[:text.index(stop)]
    events = events_of(create(api, max_tokens=30, stop_sequences=[stop], stream=True))
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": stop}


def test_forced_tool_use_then_tool_result_round_trip(api: TestClient):
    body = create(api, max_tokens=60, tools=[WEATHER, ADD], tool_choice={"type": "any"}).json()
    assert body["stop_reason"] == "tool_use", body
    (call,) = [block for block in body["content"] if block["type"] == "tool_use"]
    assert call["id"].startswith("toolu_") and call["name"] in SCHEMAS
    jsonschema.validate(call["input"], SCHEMAS[call["name"]])
    history = ASK + [
        {"role": "assistant", "content": body["content"]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call["id"], "content": "Sunny, 21 C"},
            {"type": "text", "text": "Thanks; summarise."},
        ]},
    ]
    answer = create(api, messages=history, tools=[WEATHER, ADD], tool_choice={"type": "none"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"][0]["type"] == "text"
    usage = answer.json()["usage"]
    alone = api.post("/v1/messages/count_tokens", json={"model": "default", "messages": ASK})
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] > (
        alone.json()["input_tokens"] + 20)  # the call and its result are in the prompt


def test_named_tool_streams_input_json_deltas(api: TestClient):
    resp = create(api, max_tokens=60, tools=[WEATHER, ADD], stream=True,
                  tool_choice={"type": "tool", "name": "add"})
    events = events_of(resp)
    starts = [d for n, d in events if n == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["tool_use"]
    block = starts[0]["content_block"]
    assert block["name"] == "add" and block["id"].startswith("toolu_") and block["input"] == {}
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert len(deltas) > 1 and all(d["type"] == "input_json_delta" for d in deltas)
    jsonschema.validate(json.loads("".join(d["partial_json"] for d in deltas)), SCHEMAS["add"])
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_count_tokens_matches_what_a_message_uses(api: TestClient):
    body = {"model": "claude-haiku-4-5", "messages": ASK, "system": "Be brief."}
    counted = api.post("/v1/messages/count_tokens", json=body)
    assert counted.status_code == 200, counted.text
    usage = create(api, system="Be brief.").json()["usage"]
    assert counted.json()["input_tokens"] == (
        usage["input_tokens"] + usage["cache_read_input_tokens"])
    with_tools = api.post("/v1/messages/count_tokens", json={**body, "tools": [WEATHER]})
    assert with_tools.json()["input_tokens"] > counted.json()["input_tokens"]
    assert "htdi" in with_tools.json()


def test_claude_code_attribution_line_does_not_defeat_the_prefix_cache(api: TestClient):
    system = [{"type": "text", "text": "You are a helpful assistant for the unit tests. " * 8,
               "cache_control": {"type": "ephemeral"}}]

    def ask(cch: str) -> dict:
        line = {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.197.1a2; "
                                         f"cc_entrypoint=cli; cch={cch};"}
        return create(api, system=[line, *system], max_tokens=2).json()["usage"]

    first, second = ask("97bd6"), ask("24c2d")
    # the whole prompt but its last tokens comes from the cache (the line differs early)
    assert second["cache_read_input_tokens"] >= first["input_tokens"] - 4, (first, second)
    counts = [api.post("/v1/messages/count_tokens", json={
        "model": "claude-x", "messages": ASK, "system": [
            {"type": "text", "text": f"x-anthropic-billing-header: cch={cch};"}, *system]},
    ).json()["input_tokens"] for cch in ("a", "b")]
    plain = api.post("/v1/messages/count_tokens",
                     json={"model": "claude-x", "messages": ASK, "system": system})
    assert counts[0] == counts[1] == plain.json()["input_tokens"]


def test_thinking_is_accepted_and_answered_without_thinking_blocks(api: TestClient):
    for thinking in ({"type": "enabled", "budget_tokens": 1023}, {"type": "disabled"},
                     {"type": "adaptive", "display": "omitted"}):
        resp = create(api, max_tokens=4, thinking=thinking)
        assert resp.status_code == 200, resp.text
        assert [block["type"] for block in resp.json()["content"]] == ["text"]
    resp = create(api, thinking={"type": "enabled", "budget_tokens": 0})
    assert_error(resp, 400, "invalid_request_error", "thinking.enabled.budget_tokens")


@pytest.mark.parametrize(
    "body, status, kind, param",
    [
        ({"model": "gpt-5"}, 404, "not_found_error", "model"),
        ({"model": "haiku"}, 404, "not_found_error", "model"),
        ({"max_tokens": None}, 400, "invalid_request_error", "max_tokens"),
        ({"max_tokens": 65}, 400, "invalid_request_error", "max_tokens"),
        ({"messages": []}, 400, "invalid_request_error", "messages"),
        ({"temperature": 1.5}, 400, "invalid_request_error", "temperature"),
        ({"frequency_penalty": 1}, 400, "invalid_request_error", "frequency_penalty"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]},
         400, "invalid_request_error", "messages[0].content"),
        ({"messages": ASK + [{"role": "assistant", "content": "Paris"}]},
         400, "invalid_request_error", "messages[1].role"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}},
         400, "invalid_request_error", "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, 400, "invalid_request_error", "tools"),
        ({"stop_sequences": ["x"] * 17}, 400, "invalid_request_error", "stop_sequences"),
        ({"messages": [{"role": "user", "content": "word " * 1100}]},
         400, "invalid_request_error", "messages"),
    ],
)
def test_errors_use_anthropics_envelope(api: TestClient, body, status, kind, param):
    payload = {k: v for k, v in body.items() if v is not None}
    resp = create(api, **payload) if body.get("max_tokens", 1) else api.post(
        "/v1/messages", json={"model": "claude-x", "messages": ASK})
    error = assert_error(resp, status, kind, param)
    assert "Traceback" not in error["error"]["message"]


def test_malformed_json_unknown_route_and_auth(api: TestClient):
    bad = api.post("/v1/messages", content=b"{nope", headers={"content-type": "application/json"})
    assert_error(bad, 400, "invalid_request_error")
    assert_error(api.get("/v1/messages/nothing-here"), 404, "not_found_error")
    fresh = TestClient(api.app)
    assert_error(fresh.post("/v1/messages", json={}), 401, "authentication_error")
    wrong = fresh.post("/v1/messages", json={}, headers={"x-api-key": "wrong"})
    assert_error(wrong, 401, "authentication_error")
    bearer = fresh.post("/v1/messages/count_tokens", json={"model": "default", "messages": ASK},
                        headers={"authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200
    openai = fresh.post("/v1/chat/completions", json={}, headers={"x-api-key": "wrong"})
    assert openai.status_code == 401 and openai.json()["error"]["code"] == "invalid_api_key"


def test_queue_full_is_529_overloaded(api: TestClient, monkeypatch: pytest.MonkeyPatch):
    async def full(*args, **kwargs):
        raise errors.queue_full("The model's queue is full.")

    monkeypatch.setattr(api.app.state.messages.core, "start", full)
    resp = create(api)
    assert_error(resp, 529, "overloaded_error")
    assert resp.headers["retry-after"] == "1"


def test_error_after_the_stream_started_is_an_error_event(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
):
    from app.generation.core import Run

    original = Run.events

    async def failing(self):
        async for event in original(self):
            yield event
            raise errors.APIError(500, "The engine failed.", type="server_error",
                                  code="internal_error")

    monkeypatch.setattr(Run, "events", failing)
    events = events_of(create(api, stream=True))
    name, data = events[-1]
    assert name == "error" and data["error"] == {
        "type": "api_error", "message": "The engine failed.", "code": "internal_error"}
    assert "message_stop" not in [n for n, _ in events]


def test_a_silent_run_still_sends_pings(api: TestClient, monkeypatch: pytest.MonkeyPatch):
    """Claude Code gives up on a stream after 180 s without a byte: while nothing else is
    said (a slow prompt, text held back as a possible tool call) pings keep coming."""
    import asyncio

    from app.generation.core import Run
    from app.handler import messages_stream

    original = Run.events

    async def slow(self):
        await asyncio.sleep(0.5)
        async for event in original(self):
            yield event

    monkeypatch.setattr(Run, "events", slow)
    monkeypatch.setattr(messages_stream, "PING_EVERY_S", 0.05)
    names = [name for name, _ in events_of(create(api, stream=True))]
    first_block = names.index("content_block_start")
    assert names[:first_block].count("ping") >= 5, names
    assert names[-1] == "message_stop"
