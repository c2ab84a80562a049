"""Every bad input gets its 4xx envelope, and the server keeps serving afterwards."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest

from tests.robustness.conftest import (
    LIMITS,
    MESSAGES,
    Server,
    assert_envelope,
    assert_still_serving,
    chat_body,
    raw_request,
    split_response,
)

CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


# (name, JSON body or raw bytes, path, status, code, param)
CASES = [
    ("too_many_messages", chat_body(messages=MESSAGES * (LIMITS["max_messages"] + 1)),
     CHAT, 400, None, "messages"),
    ("too_many_stop_sequences", chat_body(stop=[f"s{i}" for i in range(5)]),
     CHAT, 400, None, "stop"),
    ("logit_bias_too_large", chat_body(logit_bias={str(i): 1 for i in range(301)}),
     CHAT, 400, None, "logit_bias"),
    ("logit_bias_out_of_vocab", chat_body(logit_bias={"999999": 1}), CHAT, 400, None,
     "logit_bias"),
    ("n_over_limit", chat_body(n=LIMITS["max_n"] + 1), CHAT, 400, None, "n"),
    ("top_logprobs_over_20", chat_body(logprobs=True, top_logprobs=21), CHAT, 400, None,
     "top_logprobs"),
    ("chat_template_in_request", chat_body(chat_template="{{ 7*7 }}"), CHAT, 400, None,
     "chat_template"),
    ("chat_template_kwargs_in_request", chat_body(chat_template_kwargs={"x": 1}), CHAT, 400,
     None, "chat_template_kwargs"),
    ("max_tokens_over_model_cap", chat_body(max_tokens=257), CHAT, 400,
     "max_tokens_exceeded", "max_tokens"),
    ("negative_max_tokens", chat_body(max_tokens=-1), CHAT, 400, None, "max_tokens"),
    ("context_length_exceeded",
     chat_body(messages=[{"role": "user", "content": "word " * 600}]), CHAT, 400,
     "context_length_exceeded", None),
    ("unknown_model", chat_body(model="nope"), CHAT, 404, "model_not_found", "model"),
    ("model_path_traversal", chat_body(model="../../../etc/passwd"), CHAT, 404,
     "model_not_found", "model"),
    ("wrong_type_messages", chat_body(messages="hello"), CHAT, 400, None, "messages"),
    ("missing_model", {"messages": MESSAGES}, CHAT, 400, None, "model"),
    ("temperature_out_of_range", chat_body(temperature=-1), CHAT, 400, None, "temperature"),
    ("seed_over_int64", chat_body(seed=2**63), CHAT, 400, None, "seed"),
    ("empty_messages", chat_body(messages=[]), CHAT, 400, None, "messages"),
    ("top_level_array", [chat_body()], CHAT, 400, None, None),
    ("embeddings_on_chat_model", {"model": "tiny", "input": "x"}, "/v1/embeddings", 400,
     "model_not_capable", "model"),
    ("embedding_token_ids_out_of_range", {"model": "tiny-embed", "input": [[1, 2, 99999]]},
     "/v1/embeddings", 400, None, "input"),
    ("embedding_negative_token_id", {"model": "tiny-embed", "input": [-1]},
     "/v1/embeddings", 400, None, "input"),
    ("too_many_embedding_inputs",
     {"model": "tiny-embed", "input": ["a"] * (LIMITS["max_embedding_inputs"] + 1)},
     "/v1/embeddings", 400, None, "input"),
    ("completion_prompt_ids_out_of_vocab", {"model": "tiny", "prompt": [1, 2, 999999]},
     "/v1/completions", 400, None, "prompt"),
    ("completion_negative_prompt_id", {"model": "tiny", "prompt": [[5, -3]]},
     "/v1/completions", 400, None, "prompt"),
    ("nested_json_over_depth", chat_body(metadata=json.loads("{\"a\":" * 40 + "1" + "}" * 40)),
     CHAT, 400, "json_too_deep", None),
    # raw bodies
    ("deep_array_past_parser_recursion", b"[" * 30000 + b"]" * 30000, CHAT, 400,
     "json_too_deep", None),
    ("malformed_json", b'{"model": "tiny", "messages": [', CHAT, 400, "invalid_json", None),
    ("empty_body", b"", CHAT, 400, None, None),
    ("invalid_utf8", json.dumps(chat_body()).encode().replace(b"France", b"Fr\xff\xfence"),
     CHAT, 400, "invalid_encoding", None),
    ("utf8_encoded_surrogate", json.dumps(chat_body()).encode().replace(b"France",
                                                                        b"\xed\xa0\x80"),
     CHAT, 400, "invalid_encoding", None),
    ("lone_surrogate_escape", json.dumps(chat_body()).encode().replace(b"France", b"\\ud800"),
     CHAT, 400, "invalid_encoding", None),
    ("lone_low_surrogate_in_key", b'{"\\udc00": 1, "model": "tiny"}', CHAT, 400,
     "invalid_encoding", None),
    ("utf16_body", json.dumps(chat_body()).encode("utf-16"), CHAT, 400, "invalid_encoding",
     None),
]


@pytest.mark.parametrize(
    "body, path, status, code, param", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_and_server_survives(
    server: Server, client: httpx.Client, body, path, status, code, param
):
    if isinstance(body, bytes):
        resp = client.post(path, content=body, headers=JSON)
    else:
        resp = client.post(path, json=body)
    assert_envelope(resp, status, code, param)
    assert_still_serving(server.base_url)


@pytest.mark.parametrize(
    "body",
    [
        # json.dumps escapes the emoji as the valid pair "\ud83d\ude00"
        chat_body(messages=[{"role": "user", "content": "emoji \U0001F600 and NUL \u0000"}]),
        chat_body(seed=2**63 - 1, temperature=1.0),  # OpenAI's seed is an int64
        chat_body(seed=-(2**63), temperature=1.0),
        chat_body(top_k=10**9, temperature=1.0),
        chat_body(seed=2**63 - 1, n=2, temperature=1.0),
        chat_body(messages=[{"role": "assistant", "content": None}]),
    ],
    ids=["surrogate_pair_and_nul", "max_seed", "min_seed", "huge_top_k", "max_seed_n2",
         "null_content"],
)
def test_odd_but_valid_input_is_served(server: Server, client: httpx.Client, body):
    resp = client.post(CHAT, json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["finish_reason"] in {"stop", "length"}


def test_body_over_limit_with_content_length(server: Server, client: httpx.Client):
    big = json.dumps(chat_body(messages=[{"role": "user", "content": "a" * 70000}]))
    resp = client.post(CHAT, content=big, headers=JSON)
    error = assert_envelope(resp, 413, "request_too_large")
    assert str(LIMITS["max_body_bytes"]) in error["message"]
    assert_still_serving(server.base_url)


def test_chunked_body_over_limit_is_cut_off_while_reading(server: Server, client: httpx.Client):
    sent = []

    def chunks():
        for _ in range(1000):  # up to 1 MB, far over the 64 KiB limit
            sent.append(1)
            yield b" " * 1024

    try:
        resp = client.post(CHAT, content=chunks(), headers=JSON)
    except httpx.HTTPError:  # the server may close before the client finished sending
        resp = None
    if resp is not None:
        assert "content-length" not in resp.request.headers
        assert_envelope(resp, 413, "request_too_large")
    assert_still_serving(server.base_url)


def test_header_over_limit_gets_431_envelope(server: Server, client: httpx.Client):
    filler = "x" * (LIMITS["max_header_bytes"] + 100)
    resp = client.get("/health", headers={"X-Big": filler})
    assert_envelope(resp, 431, "request_header_fields_too_large")
    assert_still_serving(server.base_url)


def test_trickled_headers_over_limit_get_431_from_the_parser(server: Server):
    """Headers that never end are cut off by h11 once they pass the limit."""
    url = urlparse(server.base_url)
    half = b"x" * (LIMITS["max_header_bytes"] // 2 + 100)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + half)
        time.sleep(0.2)
        sock.sendall(half)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status, headers, body = split_response(raw)
    assert status == 431
    assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    assert headers["connection"] == "close"
    assert_still_serving(server.base_url)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    ],
    ids=["non_numeric_content_length", "garbage_request_line", "invalid_header_name"],
)
def test_unparseable_http_gets_400_envelope(server: Server, request_bytes: bytes):
    status, _, body = split_response(raw_request(server, request_bytes))
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_http_request"
    assert_still_serving(server.base_url)


def test_wrong_method_and_unknown_path(server: Server, client: httpx.Client):
    assert_envelope(client.get(CHAT), 405, "method_not_allowed")
    assert_envelope(client.get("/v1/nothing-here"), 404, "not_found")
    assert_still_serving(server.base_url)
