"""A web page cannot drive the server (issue 23 #5): DNS rebinding, cross-site posts, form
bodies, the admin API, and /ready after an unload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.browser_guard import host_name
from app.config import Settings
from app.lifecycle.registry import ModelRegistry, ModelSpec
from app.main import create_app
from tests.robustness.conftest import assert_envelope, chat_body
from tests.unit.live_server import live_server

EVIL = "https://evil.example"
CHAT = "/v1/chat/completions"
UNLOAD = "/admin/models/default/unload"


def _registry(tiny_llama_dir: Path) -> ModelRegistry:
    return ModelRegistry([ModelSpec(id="tiny", source=str(tiny_llama_dir), preload=True,
                                    context_length=256, aliases=["default"])])


@pytest.fixture(scope="module")
def live(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A loopback server with the admin API on, as an operator would run it locally."""
    settings = Settings(admin=True, cache_dir=tmp_path_factory.mktemp("guard-cache"))
    with live_server(create_app(settings, _registry(tiny_llama_dir)), "/ready") as base:
        yield base


def _state(base: str) -> str:
    return httpx.get(base + "/v1/models/tiny").json()["metadata"]["state"]


def test_the_reported_attack_is_refused(live: str):
    resp = httpx.post(live + UNLOAD, content=b"x=1", headers={
        "Origin": EVIL, "Host": "attacker.example",
        "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code in {400, 403, 415}, resp.text
    assert_envelope(resp, resp.status_code)
    assert _state(live) == "loaded"
    assert httpx.get(live + "/ready").status_code == 200


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:80", "127.0.0.1.nip.io"])
def test_dns_rebinding_hosts_are_refused(live: str, host: str):
    for method, path in (("POST", UNLOAD), ("GET", "/v1/models"), ("POST", CHAT)):
        resp = httpx.request(method, live + path, headers={"Host": host},
                             json=chat_body() if path == CHAT else None)
        assert_envelope(resp, 400, "invalid_host")
    assert _state(live) == "loaded"
    assert httpx.get(live + "/health", headers={"Host": host}).status_code == 200  # probes


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "app.localhost:1", "[::1]:8000"])
def test_local_hosts_are_accepted(live: str, host: str):
    assert httpx.get(live + "/v1/models", headers={"Host": host}).status_code == 200


def test_cross_origin_posts_are_refused_unless_same_origin(live: str):
    refused = httpx.post(live + CHAT, json=chat_body(max_tokens=1), headers={"Origin": EVIL})
    assert_envelope(refused, 403, "cross_origin_forbidden")
    assert "access-control-allow-origin" not in refused.headers
    assert_envelope(httpx.post(live + UNLOAD, headers={"Origin": "null"}), 403,
                    "cross_origin_forbidden")
    assert _state(live) == "loaded"
    same = httpx.post(live + CHAT, json=chat_body(max_tokens=1), headers={"Origin": live})
    assert same.status_code == 200, same.text
    assert httpx.get(live + "/v1/models", headers={"Origin": EVIL}).status_code == 200


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_form_bodies_are_refused(live: str, content_type: str):
    import json

    resp = httpx.post(live + CHAT, content=json.dumps(chat_body()).encode(),
                      headers={"Content-Type": content_type})
    error = assert_envelope(resp, 415, "unsupported_media_type")
    assert "application/json" in error["message"]
    assert_envelope(httpx.post(live + UNLOAD, headers={"Content-Type": content_type}), 415)
    assert _state(live) == "loaded"


def test_ready_reflects_an_unloaded_preload_model(live: str):
    assert httpx.post(live + UNLOAD).json()["state"] == "unloaded"
    try:
        assert_envelope(httpx.get(live + "/ready"), 503, "model_not_loaded")
    finally:
        assert httpx.post(live + "/admin/models/default/load").json()["state"] == "loaded"
    assert httpx.get(live + "/ready").status_code == 200


def test_admin_routes_are_off_unless_enabled():
    assert_envelope(TestClient(create_app(Settings())).post(UNLOAD), 404, "not_found")
    client = TestClient(create_app(Settings(api_key="user-key", admin_api_key="admin-key")))
    for key in (None, "user-key"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        assert_envelope(client.post(UNLOAD, headers=headers), 401, "invalid_api_key")
    ok = client.post("/admin/models/nope/load", headers={"Authorization": "Bearer admin-key"})
    assert_envelope(ok, 404, "model_not_found")  # past the key: the model is unknown
    assert client.get("/v1/models", headers={"Authorization": "Bearer admin-key"}
                      ).status_code == 401
    only_admin = TestClient(create_app(Settings(admin_api_key="admin-key")))
    assert only_admin.get("/v1/models").status_code == 200
    assert_envelope(only_admin.post(UNLOAD), 401, "invalid_api_key")


def test_allowed_hosts_setting_applies_to_every_connection():
    app = create_app(Settings(allowed_hosts="api.example,.corp.example"))
    assert_envelope(TestClient(app).get("/v1/models"), 400, "invalid_host")  # "testserver"
    for base in ("http://api.example", "http://x.corp.example", "http://corp.example",
                 "http://10.0.0.5:8000"):
        assert TestClient(app, base_url=base).get("/v1/models").status_code == 200
    assert TestClient(app, base_url="http://api.example.evil").get(
        "/v1/models").status_code == 400
    anyone = create_app(Settings(allowed_hosts="*"))
    assert TestClient(anyone, base_url="http://whatever").get("/v1/models").status_code == 200


@pytest.mark.parametrize("header, name", [("a.example:8000", "a.example"), ("[::1]:80", "::1"),
                                          ("::1", "::1"), ("LOCALHOST", "localhost")])
def test_host_name(header: str, name: str):
    assert host_name(header) == name


def test_the_bound_host_name_is_accepted(tiny_llama_dir: Path, tmp_path: Path):
    settings = Settings(host="llm.house.example", cache_dir=tmp_path, preload=False)
    with live_server(create_app(settings, _registry(tiny_llama_dir))) as base:
        assert httpx.get(base + "/v1/models", headers={"Host": "llm.house.example:8000"}
                         ).status_code == 200
        assert_envelope(httpx.get(base + "/v1/models", headers={"Host": "other.example"}),
                        400, "invalid_host")
