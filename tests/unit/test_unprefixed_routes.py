"""The OpenAI routes also answer without the /v1 prefix, since users paste base URLs both
ways (issue 22, "Expected and missing")."""

from __future__ import annotations

from fastapi.testclient import TestClient

MESSAGES = [{"role": "user", "content": "hi"}]


def test_routes_without_the_v1_prefix(client: TestClient):
    chat = client.post("/chat/completions", json={
        "model": "default", "messages": MESSAGES, "max_tokens": 2, "temperature": 0})
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion", chat.text
    legacy = client.post("/completions", json={
        "model": "default", "prompt": "a", "max_tokens": 2, "temperature": 0})
    assert legacy.status_code == 200 and legacy.json()["object"] == "text_completion"
    assert client.get("/models").json() == client.get("/v1/models").json()
    assert client.get("/models/tiny").json()["id"] == "tiny"
    embeddings = client.post("/embeddings", json={"model": "default", "input": "x"})
    assert embeddings.status_code == 400  # routed: the chat model cannot embed
    assert embeddings.json()["error"]["code"] == "model_not_capable"
    stream = client.post("/chat/completions", json={
        "model": "default", "messages": MESSAGES, "max_tokens": 2, "stream": True})
    assert stream.text.rstrip().endswith("data: [DONE]")


def test_unprefixed_routes_stay_out_of_the_openapi_document(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/chat/completions" in paths and "/chat/completions" not in paths
