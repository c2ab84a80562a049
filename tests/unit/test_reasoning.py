"""Thinking split from the answer: the splitter, and the chat dialect on a tiny Qwen3 GGUF
whose template opens a think block unless ``enable_thinking`` is false."""

from __future__ import annotations

import json

import jsonschema
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.generation.reasoning import ReasoningSplitter, opens_thinking
from app.lifecycle.registry import ModelRegistry, ModelSpec
from tests.unit.tiny_qwen_gguf import write_tiny_qwen
from tests.unit.waiting import ready_client


def split(pieces: list[str], *, open_at_start: bool) -> tuple[str, str]:
    splitter = ReasoningSplitter("<think>", "</think>", open_at_start=open_at_start)
    out = [p for piece in pieces for p in splitter.feed(piece)] + splitter.finish()
    return ("".join(t for r, t in out if r), "".join(t for r, t in out if not r))


@pytest.mark.parametrize("chunking", [list, lambda s: [s], lambda s: [s[:9], s[9:20], s[20:]]])
def test_splitter_separates_thinking_from_the_answer(chunking) -> None:
    assert split(chunking("I should say hi.</think>\n\nHello!"), open_at_start=True) == (
        "I should say hi.", "Hello!")
    assert split(chunking("\n<think>plan a, b</think>\n\nAnswer <think> stays"),
                 open_at_start=False) == ("plan a, b", "Answer <think> stays")
    assert split(chunking("No thinking here: </think> is text"), open_at_start=False) == (
        "", "No thinking here: </think> is text")
    assert split(chunking("cut off while thinking </thi"), open_at_start=True) == (
        "cut off while thinking </thi", "")


def test_prompt_opens_thinking_when_its_last_marker_is_a_start() -> None:
    assert opens_thinking([5, 1, 9, 3], 3, 4) and not opens_thinking([3, 7, 4, 8], 3, 4)
    assert not opens_thinking([1, 2], 3, 4)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory):
    tiny = write_tiny_qwen(tmp_path_factory.mktemp("qwen3") / "tiny-qwen3.gguf", arch="qwen3")
    registry = ModelRegistry([ModelSpec(
        id="tiny-qwen3", source=str(tiny.path), family="qwen3", context_length=512,
        limits={"max_tokens": 128}, preload=True)])
    # admin: the memory a model takes is admin-only detail in /v1/models
    settings = Settings(cache_dir=tmp_path_factory.mktemp("cache"), admin=True)
    with ready_client(settings, registry) as client:
        yield client


def chat(client: TestClient, **body):
    resp = client.post("/v1/chat/completions", json={
        "model": "tiny-qwen3", "messages": [{"role": "user", "content": "Hello world"}],
        "max_tokens": 24, "temperature": 0, **body})
    assert resp.status_code == 200, resp.text
    return resp


def streamed(client: TestClient, **body) -> tuple[str, str, str]:
    lines = [ln[6:] for ln in chat(client, stream=True, **body).text.splitlines()
             if ln.startswith("data: ")]
    deltas = [json.loads(ln)["choices"][0]["delta"] for ln in lines[:-1]
              if json.loads(ln)["choices"]]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    assert reasoning == "".join(d.get("reasoning", "") for d in deltas)
    return reasoning, "".join(d.get("content") or "" for d in deltas), lines[-1]


def test_thinking_goes_to_reasoning_never_to_content(qwen3: TestClient) -> None:
    message = chat(qwen3).json()["choices"][0]["message"]
    assert message["reasoning_content"] == message["reasoning"] != ""
    assert "<think>" not in message["content"] and "</think>" not in message["content"]
    assert "</think>" not in message["reasoning"]
    assert streamed(qwen3) == (message["reasoning"], message["content"], "[DONE]")


@pytest.mark.parametrize("body", [{"chat_template_kwargs": {"enable_thinking": False}},
                                  {"reasoning_effort": "none"}])
def test_thinking_off_through_the_template(qwen3: TestClient, body: dict) -> None:
    message = chat(qwen3, **body).json()["choices"][0]["message"]
    assert "reasoning_content" not in message and "reasoning" not in message
    assert message["content"]


def test_json_schema_applies_after_the_thinking(qwen3: TestClient) -> None:
    """The block stays free; its end is forced in time for the JSON to close."""
    schema = {"type": "object", "required": ["city", "population"],
              "properties": {"city": {"type": "string"}, "population": {"type": "integer"}}}
    resp = chat(qwen3, max_tokens=96, temperature=1.0, seed=1, n=2, response_format={
        "type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    for choice in resp.json()["choices"]:
        assert choice["message"]["reasoning"], choice
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)
        assert choice["finish_reason"] == "stop"


def test_unknown_reasoning_effort_is_400(qwen3: TestClient) -> None:
    resp = qwen3.post("/v1/chat/completions", json={
        "model": "tiny-qwen3", "messages": [{"role": "user", "content": "x"}],
        "reasoning_effort": "extreme"})
    assert resp.status_code == 400


def test_models_report_memory(qwen3: TestClient) -> None:
    models = qwen3.get("/v1/models").json()["data"]
    assert models[0]["metadata"]["memory_bytes"] > 0
