"""Validation errors name the field the user wrote, once, and say what it should be; a JSON
body without a JSON content type is read as JSON (issue 22 #11, #12)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

MESSAGES = [{"role": "user", "content": "hi"}]


def _error(resp) -> dict:
    assert resp.status_code == 400, resp.text
    return resp.json()["error"]


@pytest.mark.parametrize(
    "path, body, param, needle",
    [
        ("/v1/completions", {"model": "default", "prompt": 5}, "prompt",
         "expected a string, an array of strings"),
        ("/v1/completions", {"model": "default", "prompt": [[1, "a"]]}, "prompt[0][1]",
         "integer"),
        ("/v1/chat/completions", {"model": "default", "messages": [{"role": "user",
                                                                    "content": 5}]},
         "messages[0].content", "expected a string or an array"),
        ("/v1/chat/completions",
         {"model": "default", "messages": [{"role": "user", "content": [
             {"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[0].type", "'text'"),
        ("/v1/chat/completions", {"model": "default", "messages": MESSAGES, "stop": 5},
         "stop", "expected a string or an array of strings"),
        ("/v1/chat/completions", {"model": "default", "messages": MESSAGES, "foo": 1},
         "foo", "Unrecognized request argument"),
        ("/v1/chat/completions", {"messages": MESSAGES}, "model", "Missing required"),
    ],
)
def test_param_is_the_field_the_user_wrote(client: TestClient, path, body, param, needle):
    error = _error(client.post(path, json=body))
    assert error["param"] == param, error
    assert needle in error["message"], error
    for internal in (".str", "list[", "validation error", "TextPart]", "function-"):
        assert internal not in (error["param"] or "") + error["message"], error


def test_one_error_even_when_many_fields_are_wrong(client: TestClient):
    body = {"model": "default", "messages": MESSAGES, "top_p": 5, "n": "x", "seed": "y",
            "stop": 1, "foo": 2}
    error = _error(client.post("/v1/chat/completions", json=body))
    assert "more" not in error["message"] and error["param"] == "top_p"


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", None])
def test_a_json_body_is_read_as_json_whatever_its_type(client: TestClient, content_type):
    body = json.dumps({"model": "default", "messages": MESSAGES, "max_tokens": 1})
    headers = {"content-type": content_type} if content_type else {}
    resp = client.post("/v1/chat/completions", content=body.encode(), headers=headers)
    assert resp.status_code == 200, resp.text


def test_a_non_json_body_says_the_content_type_is_wrong(client: TestClient):
    resp = client.post("/v1/chat/completions", content=b"model=default",
                       headers={"content-type": "text/plain"})
    assert resp.status_code == 415
    error = resp.json()["error"]
    assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
    bad_json = client.post("/v1/chat/completions", content=b"{nope",
                           headers={"content-type": "application/json"})
    assert _error(bad_json)["code"] == "invalid_json"


def test_top_level_array_and_empty_body(client: TestClient):
    assert "JSON object" in _error(client.post("/v1/chat/completions", json=[1]))["message"]
    empty = client.post("/v1/chat/completions", content=b"",
                        headers={"content-type": "application/json"})
    assert "empty" in _error(empty)["message"]
