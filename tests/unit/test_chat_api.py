"""HTTP behaviour of /v1/chat/completions on a tiny random llama (in-process)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def chat(client: TestClient, **body):
    return client.post("/v1/chat/completions", json={"model": "default", "messages": MESSAGES,
                                                      "temperature": 0, **body})


def sse_events(response) -> list:
    lines = [ln for ln in response.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln[6:]) for ln in lines[:-1]]


def test_completion_shape_usage_and_htdi(client: TestClient):
    resp = chat(client, max_tokens=7, metadata={"source": "unit", "houseId": "h-9"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 7
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 7
    htdi = body["htdi"]
    assert htdi["source"] == "unit" and htdi["houseId"] == "h-9" and htdi["model"] == "tiny"
    assert resp.headers["x-request-id"] == htdi["requestId"]
    assert resp.headers["x-house-id"] == "h-9"


def test_header_ids_win_over_body_metadata(client: TestClient):
    resp = client.post(
        "/v1/chat/completions",
        json={"model": "default", "messages": MESSAGES, "max_tokens": 2,
              "metadata": {"requestId": "body-id", "houseId": "body-house"}},
        headers={"X-Request-ID": "hdr-id", "X-House-ID": "hdr-house"},
    )
    assert resp.headers["x-request-id"] == "hdr-id"
    assert resp.json()["htdi"]["houseId"] == "hdr-house"
    bad = client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert bad.headers["x-request-id"].startswith("req-")


def test_stream_matches_non_stream(client: TestClient):
    full = chat(client, max_tokens=10).json()["choices"][0]["message"]["content"]
    resp = chat(client, max_tokens=10, stream=True, stream_options={"include_usage": True})
    events = sse_events(resp)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == full
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 10
    assert "htdi" in events[-1]


def test_system_fingerprint_on_objects_and_chunks(client: TestClient):
    """Stable for one model and server version; on chat and legacy objects and chunks."""
    first = chat(client, max_tokens=2).json()["system_fingerprint"]
    assert first.startswith("fp_") and len(first) == 15
    assert chat(client, max_tokens=3).json()["system_fingerprint"] == first
    chunks = sse_events(chat(client, max_tokens=2, stream=True,
                             stream_options={"include_usage": True}))
    assert {c["system_fingerprint"] for c in chunks} == {first}
    legacy = client.post("/v1/completions", json={"model": "default", "prompt": "Hi",
                                                  "max_tokens": 2})
    assert legacy.json()["system_fingerprint"] == first
    streamed = client.post("/v1/completions", json={"model": "default", "prompt": "Hi",
                                                    "max_tokens": 2, "stream": True})
    assert {c["system_fingerprint"] for c in sse_events(streamed)} == {first}


def test_n_choices_and_seed(client: TestClient):
    body = dict(max_tokens=6, temperature=1.0, seed=7, n=3)
    a, b = chat(client, **body).json(), chat(client, **body).json()
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert [c["message"] for c in a["choices"]] == [c["message"] for c in b["choices"]]
    assert a["usage"]["completion_tokens"] == 18


@pytest.mark.parametrize(
    "body, status, code, needle",
    [
        ({"model": "nope"}, 404, "model_not_found", "nope"),
        ({"model": "../../etc/passwd"}, 404, "model_not_found", None),
        ({"max_tokens": 65}, 400, "max_tokens_exceeded", "64"),
        ({"messages": [{"role": "user", "content": "word " * 1100}]}, 400,
         "context_length_exceeded", "1024"),
        ({"response_format": {"type": "json_schema"}}, 400, None, "json_schema"),
        ({"logit_bias": {"999999": 1}}, 400, None, "vocabulary"),
        ({"stop": [""]}, 400, None, "stop"),
        ({"top_p": 0}, 400, None, "top_p"),
    ],
)
def test_errors_are_envelopes(client: TestClient, body, status, code, needle):
    resp = chat(client, **body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    if code:
        assert error["code"] == code
    if needle:
        assert needle in error["message"] or needle == error["param"]
    assert resp.headers["x-request-id"] == resp.json()["htdi"]["requestId"]


def test_body_limit_and_bad_json(client: TestClient):
    big = json.dumps({"model": "default", "messages": [{"role": "user", "content": "a" * 70000}]})
    resp = client.post("/v1/chat/completions", content=big,
                       headers={"content-type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
    resp = client.post("/v1/chat/completions", content=b"{nope",
                       headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"


def test_unexpected_failure_is_500_without_details(client: TestClient, monkeypatch):
    async def boom(*args, **kwargs):
        raise RuntimeError("/very/secret/path exploded")

    monkeypatch.setattr(client.app.state.manager, "acquire", boom)
    resp = chat(client, max_tokens=2)
    assert resp.status_code == 500
    error = resp.json()["error"]
    assert error["code"] == "internal_error" and "secret" not in error["message"]
    assert resp.headers["x-request-id"]


def test_models_endpoint(client: TestClient):
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    card = data["data"][0]
    assert card["id"] == "tiny" and card["metadata"]["state"] == "loaded"
    assert client.get("/v1/models/default").json()["id"] == "tiny"
    assert client.get("/v1/models/nope").status_code == 404


def test_logprobs_shape_and_ordering(client: TestClient):
    body = chat(client, max_tokens=5, logprobs=True, top_logprobs=3).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 5
    text = "".join(entry["token"] for entry in content)
    assert text == body["choices"][0]["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode(errors="replace")
        tops = entry["top_logprobs"]
        assert len(tops) == 3
        values = [t["logprob"] for t in tops]
        assert values == sorted(values, reverse=True)
        assert tops[0]["token"] == entry["token"]  # greedy picks the most likely token
        assert abs(tops[0]["logprob"] - entry["logprob"]) < 1e-5
    streamed = sse_events(chat(client, max_tokens=5, logprobs=True, top_logprobs=2, stream=True))
    got = [e["choices"][0]["logprobs"] for e in streamed if e["choices"][0]["delta"].get("content")]
    assert sum(len(lp["content"]) for lp in got) == 5
    assert chat(client, top_logprobs=2).status_code == 400
    assert chat(client, logprobs=True, top_logprobs=21).status_code == 400


def _token_id(client: TestClient, raw: list[int]) -> int:
    """The id of a byte-level BPE token given its bytes (as logprobs report them)."""
    from mlx_lm.tokenizer_utils import _byte_decoder

    encoder = {b: c for c, b in _byte_decoder().items()}
    tokenizer = client.app.state.manager.models["tiny"].loaded.tokenizer
    return tokenizer.convert_tokens_to_ids("".join(encoder[b] for b in raw))


def test_logit_bias_bans_a_token(client: TestClient):
    first = chat(client, max_tokens=4, logprobs=True).json()["choices"][0]["logprobs"]["content"]
    banned = _token_id(client, first[0]["bytes"])
    body = chat(client, max_tokens=4, logprobs=True, logit_bias={str(banned): -100}).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert all(_token_id(client, e["bytes"]) != banned for e in content)
    assert content[0]["token"] != first[0]["token"]


def test_penalties_change_output(client: TestClient):
    plain = chat(client, max_tokens=24).json()["choices"][0]["message"]["content"]
    penalised = chat(client, max_tokens=24, frequency_penalty=2.0, presence_penalty=2.0).json()
    assert penalised["choices"][0]["message"]["content"] != plain


def test_stop_token_ids_end_generation(client: TestClient):
    content = chat(client, max_tokens=6, logprobs=True).json()["choices"][0]["logprobs"]["content"]
    third = _token_id(client, content[2]["bytes"])
    body = chat(client, max_tokens=6, stop_token_ids=[third]).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] <= 3


def _greedy_from_ids(client: TestClient, ids: list[int], max_tokens: int) -> str:
    resp = client.post("/v1/completions", json={"model": "default", "prompt": ids,
                                                "max_tokens": max_tokens, "temperature": 0})
    return resp.json()["choices"][0]["text"]


def test_continue_final_message_and_add_generation_prompt(client: TestClient):
    """Assistant prefill: the last assistant message is continued, not closed; without a
    generation prompt the conversation ends where the messages end."""
    tokenizer = client.app.state.manager.models["tiny"].loaded.tokenizer
    prefill = [*MESSAGES, {"role": "assistant", "content": "The capital is"}]
    resp = chat(client, messages=prefill, continue_final_message=True, max_tokens=5)
    assert resp.status_code == 200, resp.text
    rendered = tokenizer.apply_chat_template(prefill, tokenize=False,
                                             continue_final_message=True)
    assert rendered.endswith("assistant\nThe capital is")  # open, no end-of-turn marker
    ids = tokenizer.encode(rendered, add_special_tokens=False)
    assert resp.json()["usage"]["prompt_tokens"] == len(ids)
    assert resp.json()["choices"][0]["message"]["content"] == _greedy_from_ids(client, ids, 5)

    resp = chat(client, add_generation_prompt=False, max_tokens=5)
    ids = tokenizer.encode(tokenizer.apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=False), add_special_tokens=False)
    assert resp.json()["usage"]["prompt_tokens"] == len(ids)
    assert resp.json()["choices"][0]["message"]["content"] == _greedy_from_ids(client, ids, 5)
    # the default opens the assistant's turn
    opened = chat(client, max_tokens=1).json()["usage"]["prompt_tokens"]
    assert opened > len(ids)


@pytest.mark.parametrize("extra", [
    {"continue_final_message": True},  # the last message is the user's
    {"messages": [*MESSAGES, {"role": "assistant", "content": "x"}],
     "continue_final_message": True, "add_generation_prompt": True},
    {"chat_template_kwargs": {"add_generation_prompt": False}},
    {"chat_template_kwargs": ["not", "a", "dict"]},
])
def test_contradictory_template_options_are_400(client: TestClient, extra):
    resp = chat(client, max_tokens=2, **extra)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"].split(".")[0] in (
        "continue_final_message", "chat_template_kwargs")


def test_input_tokens_shows_the_rendered_prompt_and_its_count(client: TestClient):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for extra in ({}, {"tools": tools},
                  {"messages": [*MESSAGES, {"role": "assistant", "content": "It is"}],
                   "continue_final_message": True}):
        body = {"model": "default", "messages": MESSAGES, "max_tokens": 3, "temperature": 0,
                **extra}
        resp = client.post("/v1/chat/completions/input_tokens", json=body)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert out["object"] == "chat.completion.input_tokens" and out["model"] == "tiny"
        assert out["input_tokens"] == len(out["tokens"]) and out["max_model_len"] == 1024
        assert "htdi" in out and resp.headers["x-request-id"]
        # exactly what a chat completion of the same body is prompted with
        used = client.post("/v1/chat/completions", json=body).json()["usage"]["prompt_tokens"]
        assert used == out["input_tokens"]
    assert out["prompt"].endswith("<|im_start|>assistant\nIt is")
    assert "What is the capital of France?" in out["prompt"]
    bad = client.post("/v1/chat/completions/input_tokens",
                      json={"model": "default", "messages": MESSAGES,
                            "continue_final_message": True})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "continue_final_message"
    missing = client.post("/v1/chat/completions/input_tokens",
                          json={"model": "nope", "messages": MESSAGES})
    assert missing.status_code == 404


def test_fields_openai_documents_are_accepted(client: TestClient):
    """What SDKs and stored OpenAI histories send: accepted, honoured where they can be."""
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "refusal": None, "audio": None, "name": "bot",
         "function_call": {"name": "get_weather", "arguments": "{}"}},
        {"role": "function", "name": "get_weather", "content": "Sunny"},
    ]
    body = {"model": "default", "messages": history, "max_tokens": 4, "service_tier": "auto",
            "store": False, "verbosity": "low", "modalities": ["text"],
            "prediction": {"type": "content", "content": "Sunny"}, "prompt_cache_key": "k",
            "safety_identifier": "u1"}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    legacy = {"model": "default", "messages": [{"role": "user", "content": "hi"}],
              "functions": [{"name": "add", "parameters": {"type": "object", "properties": {
                  "a": {"type": "integer"}}, "required": ["a"]}}],
              "function_call": {"name": "add"}, "max_tokens": 64, "temperature": 0}
    message = client.post("/v1/chat/completions", json=legacy).json()["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["name"] == "add"  # functions act as tools


def test_fields_that_cannot_be_honoured_are_refused(client: TestClient):
    base = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    for extra, param in (({"modalities": ["text", "audio"]}, "modalities"),
                         ({"web_search_options": {}}, "web_search_options")):
        resp = client.post("/v1/chat/completions", json={**base, **extra})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param
