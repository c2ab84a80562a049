"""The real server, the real default model, the official openai client."""

from __future__ import annotations

import json

import httpx
import pytest

PARIS = [{"role": "user", "content": "What is the capital of France?"}]


def test_greedy_answer_is_paris_with_openai_shape(client, server):
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=PARIS, temperature=0, max_tokens=24,
        extra_headers={"X-Request-ID": "e2e-paris-1", "X-House-ID": "house-7"},
    )
    assert raw.headers["x-request-id"] == "e2e-paris-1"
    assert raw.headers["x-house-id"] == "house-7"
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "smollm2-135m-instruct"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 5 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    htdi = completion.model_extra["htdi"]
    assert htdi["requestId"] == "e2e-paris-1" and htdi["houseId"] == "house-7"
    assert htdi["model"] == "smollm2-135m-instruct" and htdi["latencyMs"] > 0


def test_stream_equals_non_stream_at_temperature_zero(client):
    messages = [{"role": "user", "content": "Name three colours."}]
    full = client.chat.completions.create(
        model="default", messages=messages, temperature=0, max_tokens=40
    )
    chunks = list(
        client.chat.completions.create(
            model="default", messages=messages, temperature=0, max_tokens=40, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert finals[0].choices[0].finish_reason == full.choices[0].finish_reason
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == full.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == full.usage.prompt_tokens
    assert usage_chunk.model_extra["htdi"]["requestId"]


def test_length_finish_reason_and_exact_token_count(client):
    completion = client.chat.completions.create(
        model="default", temperature=0, max_completion_tokens=5,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5


def test_stop_string_is_not_emitted(client):
    base = client.chat.completions.create(
        model="default", messages=PARIS, temperature=0, max_tokens=24
    ).choices[0].message.content
    assert "Paris" in base
    stopped = client.chat.completions.create(
        model="default", messages=PARIS, temperature=0, max_tokens=24, stop=["Paris"]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == base[: base.index("Paris")]


def test_seed_reproducible_and_n_choices(client):
    kwargs = dict(
        model="default", temperature=1.0, max_tokens=16, seed=1234,
        messages=[{"role": "user", "content": "Tell me a fun fact."}],
    )
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert a.choices[0].message.content == b.choices[0].message.content
    many = client.chat.completions.create(**kwargs, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.choices[0].message.content == a.choices[0].message.content


def test_streaming_headers_and_htdi_on_final_chunk(server):
    body = {"model": "default", "messages": PARIS, "max_tokens": 8, "stream": True,
            "metadata": {"requestId": "body-id-1", "houseId": "h-body", "source": "e2e"}}
    with httpx.stream("POST", server.v1 + "/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"] == "body-id-1"
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    final = json.loads(lines[-2][len("data: "):])
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert final["htdi"] == {**final["htdi"], "requestId": "body-id-1", "houseId": "h-body",
                             "source": "e2e"}


def test_models_list_shows_registry_and_state(client):
    models = {m.id: m for m in client.models.list().data}
    chat = models["smollm2-135m-instruct"].model_extra["metadata"]
    assert chat["state"] == "loaded" and chat["family"] == "llama"
    assert chat["context_length"] == 8192 and "chat" in chat["capabilities"]


def _post(server, body, **kw) -> httpx.Response:
    return httpx.post(server.v1 + "/chat/completions", timeout=60, **({"json": body} | kw))


def _assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    payload = resp.json()
    error = payload["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert resp.headers["x-request-id"] == payload["htdi"]["requestId"]
    if code is not None:
        assert error["code"] == code
    assert "Traceback" not in error["message"] and "/site-packages/" not in error["message"]
    return error


def test_malformed_json_is_400(server):
    resp = httpx.post(server.v1 + "/chat/completions", content=b'{"model": "default", ',
                      headers={"content-type": "application/json", "X-House-ID": "h1"})
    _assert_error(resp, 400)
    assert resp.headers["x-house-id"] == "h1"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "default"}, "messages"),
        ({"model": "default", "messages": []}, "messages"),
        ({"model": "default", "messages": PARIS, "temperature": 5}, "temperature"),
        ({"model": "default", "messages": PARIS, "max_tokens": 0}, "max_tokens"),
        ({"model": "default", "messages": [{"role": "wizard", "content": "x"}]}, None),
        ({"model": "default", "messages": PARIS, "frobnicate": True}, "frobnicate"),
        ({"model": "default", "messages": PARIS, "n": 99}, "n"),
    ],
)
def test_validation_errors_are_400_envelopes(server, body, param):
    error = _assert_error(_post(server, body), 400)
    if param:
        assert param in (error["param"] or "") or param in error["message"]


def test_unknown_and_path_like_models_are_404(server):
    for name in ["no-such-model", "../../etc/passwd", "/tmp/models/x.gguf"]:
        _assert_error(_post(server, {"model": name, "messages": PARIS}), 404, "model_not_found")


def test_context_length_and_max_tokens_cap(server):
    error = _assert_error(
        _post(server, {"model": "default", "messages": PARIS, "max_tokens": 100000}), 400
    )
    assert "2048" in error["message"]
    long_text = "hello " * 9000
    error = _assert_error(
        _post(server, {"model": "default", "max_tokens": 10,
                       "messages": [{"role": "user", "content": long_text}]}),
        400, "context_length_exceeded",
    )
    assert "8192" in error["message"]


def test_body_over_limit_is_413_even_chunked(server):
    big = b'{"model": "default", "messages": [{"role": "user", "content": "' + b"a" * (
        5 * 1024 * 1024) + b'"}]}'
    _assert_error(httpx.post(server.v1 + "/chat/completions", content=big,
                             headers={"content-type": "application/json"}), 413,
                  "request_too_large")

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    _assert_error(httpx.post(server.v1 + "/chat/completions", content=chunks(),
                             headers={"content-type": "application/json"}), 413,
                  "request_too_large")


def test_generated_request_id_and_health(server):
    resp = httpx.get(server.base_url + "/health")
    assert resp.status_code == 200 and resp.headers["x-request-id"].startswith("req-")
    assert httpx.get(server.base_url + "/ready").status_code == 200
    _assert_error(httpx.get(server.v1 + "/nope"), 404)
