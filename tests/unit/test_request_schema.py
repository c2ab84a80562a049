"""Request fields as OpenAI types them: strict types, null as "default", int64 seeds,
sane minimums, token-id logit_bias keys, stream_options only with stream (issues 22, 23)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.schemas.embeddings import EmbeddingRequest
from app.schemas.tokenize import TokenizeRequest

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(client: TestClient, **fields):
    body = {"model": "default", "messages": MESSAGES, "max_tokens": 2, "temperature": 0,
            **fields}
    return client.post("/v1/chat/completions", json=body)


def assert_400(resp, param: str) -> dict:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert resp.headers["x-request-id"] == resp.json()["htdi"]["requestId"]
    return error


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"n": "2"}, "n"),
        ({"n": True}, "n"),
        ({"max_tokens": "2"}, "max_tokens"),
        ({"stream": "true"}, "stream"),
        ({"temperature": "0.5"}, "temperature"),
        ({"seed": 2**63}, "seed"),
        ({"seed": 2**64 - 1}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"temperature": 1e-320}, "temperature"),
        ({"temperature": 0.005}, "temperature"),
        ({"repetition_penalty": 1e-320}, "repetition_penalty"),
        ({"logit_bias": {"²": 1}}, "logit_bias"),
        ({"logit_bias": {"1" * 5000: 1}}, "logit_bias"),
        ({"logit_bias": {" 1": 1}}, "logit_bias"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_bad_fields_are_400_naming_the_field(client: TestClient, fields: dict, param: str):
    assert_400(chat(client, **fields), param)


@pytest.mark.parametrize(
    "fields",
    [
        {"n": None, "stream": None, "temperature": None, "top_p": None, "stop": None,
         "seed": None, "presence_penalty": None, "frequency_penalty": None,
         "logit_bias": None, "user": None, "logprobs": None, "top_logprobs": None,
         "response_format": None, "tools": None, "tool_choice": None,
         "parallel_tool_calls": None, "stream_options": None, "max_completion_tokens": None,
         "ignore_eos": None, "min_tokens": None, "speculative": None, "metadata": None},
        {"seed": 2**63 - 1},
        {"seed": -(2**63)},
        {"temperature": 0.01},
        {"temperature": 1},  # an integer is a number
        {"repetition_penalty": 0.01},
        {"logit_bias": {"5": 1}},
    ],
)
def test_accepted_fields(client: TestClient, fields: dict):
    resp = chat(client, **fields)
    assert resp.status_code == 200, resp.text


def test_null_means_default_on_legacy_completions_and_streams(client: TestClient):
    resp = client.post("/v1/completions", json={
        "model": "default", "prompt": "a", "max_tokens": 2, "temperature": 0, "n": None,
        "echo": None, "stream": None, "best_of": None, "suffix": None, "logprobs": None})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["choices"]) == 1
    stream = chat(client, stream=True, stream_options={"include_usage": None})
    assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")


def test_null_means_default_elsewhere():
    assert EmbeddingRequest.model_validate(
        {"model": "m", "input": "x", "encoding_format": None}).encoding_format == "float"
    request = TokenizeRequest.model_validate(
        {"model": "m", "prompt": "x", "add_special_tokens": None, "return_token_strs": None})
    assert request.add_special_tokens is True and request.return_token_strs is False
