"""Small leaks and rough edges (issue 23 #13): HEAD probes, WebSocket and shutdown refusals
as envelopes, model sources and timings for administrators only."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from app.api.middleware import HTDIMiddleware
from app.api.models import ADMIN_DETAIL
from app.config import Settings
from app.main import create_app


def test_head_probes():
    client = TestClient(create_app(Settings(preload=False)))
    for path in ("/health", "/ready", "/health/ready"):
        resp = client.head(path)
        assert resp.status_code == 200 and resp.content == b"", path
        assert resp.headers["x-request-id"]


async def _run(app, scope: dict, inbound: list[dict], cancel_after: float | None = None):
    sent: list[dict] = []

    async def receive() -> dict:
        if inbound:
            return inbound.pop(0)
        await asyncio.Event().wait()  # a client that never sends more
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    if cancel_after is None:
        await asyncio.wait_for(task, 10)
    else:
        await asyncio.sleep(cancel_after)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return sent


def _http_scope(path: str, method: str = "GET") -> dict:
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
            "query_string": b"", "headers": [(b"host", b"127.0.0.1")], "scheme": "http",
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000)}


def test_websocket_handshake_gets_an_envelope():
    app = create_app(Settings(preload=False))
    scope = {**_http_scope("/v1/chat/completions"), "type": "websocket",
             "headers": [(b"host", b"127.0.0.1"), (b"x-request-id", b"ws-1")],
             "extensions": {"websocket.http.response": {}}}
    del scope["method"]
    sent = asyncio.run(_run(app, scope, [{"type": "websocket.connect"}]))
    start, body = sent
    assert start["type"] == "websocket.http.response.start" and start["status"] == 403
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json" and headers[b"x-request-id"] == b"ws-1"
    payload = json.loads(body["body"])
    assert payload["error"]["code"] == "websocket_not_supported"
    assert payload["htdi"]["requestId"] == "ws-1"


def test_a_request_cancelled_at_shutdown_gets_a_503_envelope():
    async def never_answers(scope, receive, send) -> None:
        await asyncio.Event().wait()

    app = HTDIMiddleware(never_answers, max_body_bytes=1024)
    sent = asyncio.run(_run(app, _http_scope("/v1/models"), [], cancel_after=0.05))
    start, body = sent
    assert start["status"] == 503
    assert json.loads(body["body"])["error"]["code"] == "shutting_down"
    slow_body = [{"type": "http.request", "body": b"{", "more_body": True}]
    scope = {**_http_scope("/v1/chat/completions", "POST")}
    sent = asyncio.run(_run(HTDIMiddleware(never_answers, max_body_bytes=1024), scope,
                            slow_body, cancel_after=0.05))
    assert sent[0]["status"] == 503


def _metadata(client: TestClient, **headers: str) -> dict:
    data = client.get("/v1/models", headers=headers).json()["data"]
    assert data
    return data[0]["metadata"]


def test_model_sources_and_timings_are_for_administrators():
    public = _metadata(TestClient(create_app(Settings(preload=False))))
    assert not ADMIN_DETAIL & set(public) and public["state"] == "unloaded"
    assert {"context_length", "capabilities", "state"} <= set(public)
    admin = _metadata(TestClient(create_app(Settings(preload=False, admin=True))))
    assert {"source", "load_seconds", "memory_bytes"} <= set(admin)
    keyed = TestClient(create_app(Settings(preload=False, admin_api_key="adm")))
    assert not ADMIN_DETAIL & set(_metadata(keyed))
    assert "source" not in _metadata(keyed, Authorization="Bearer wrong")
    assert "source" in _metadata(keyed, Authorization="Bearer adm")
