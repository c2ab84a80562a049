"""API keys guard every registered route (and unknown ones); CORS only when configured."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.openapi import http_routes
from app.config import Settings
from app.main import create_app
from tests.robustness.conftest import (
    Server,
    assert_envelope,
    chat_body,
    raw_request,
    split_response,
    start_server,
)

KEYS = ["key-one", "key-two"]
FILE_KEY = "key-from-file"
ORIGIN = "http://ok.example"
PUBLIC = {"/health", "/ready", "/health/ready"}


@pytest.fixture(scope="module")
def auth_server(models_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("auth-server")
    key_file = workdir / "keys.txt"
    key_file.write_text(f"# one key per line\n\n{FILE_KEY}\n")
    srv = start_server(workdir, models_file, "--api-key", ",".join(KEYS),
                       "--api-key-file", str(key_file), "--cors-origins", ORIGIN,
                       "--no-preload", "--admin")
    try:
        yield srv
    finally:
        assert srv.stop(signal.SIGINT) == 0, srv.log_text()[-3000:]


def _registered_routes() -> list[tuple[str, str]]:
    """Every (method, concrete path) the app registers, path parameters filled in."""
    out = []
    for path, methods in http_routes(create_app(Settings(api_key="x", admin=True))):
        concrete = re.sub(r"\{[^}]+\}", "tiny", path)
        out += [(method, concrete) for method in sorted(methods)]
    return sorted(out)


ROUTES = _registered_routes()


def _call(server: Server, method: str, path: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    body = chat_body(max_tokens=1) if method in {"POST", "PUT", "PATCH"} else None
    return httpx.request(method, server.base_url + path, headers=headers, json=body, timeout=60)


def test_route_list_covers_the_api() -> None:
    paths = {p for _, p in ROUTES}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
            "/v1/models/tiny", "/metrics", "/openapi.json", "/docs", "/health"} <= paths


@pytest.mark.parametrize("method, path", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_registered_route_needs_the_key(auth_server: Server, method: str, path: str):
    if path in PUBLIC:
        assert _call(auth_server, method, path, None).status_code == 200
        return
    for key in (None, "wrong-key", KEYS[0] + "x", KEYS[0][:-1]):
        resp = _call(auth_server, method, path, key)
        if method == "HEAD":  # no body to hold the envelope
            assert resp.status_code == 401
        else:
            assert_envelope(resp, 401, "invalid_api_key")
        assert resp.headers["www-authenticate"] == "Bearer"
    assert _call(auth_server, method, path, KEYS[1]).status_code != 401


@pytest.mark.parametrize("key", [*KEYS, FILE_KEY])
def test_each_configured_key_works(auth_server: Server, key: str):
    resp = httpx.post(auth_server.base_url + "/v1/chat/completions", json=chat_body(),
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    "header, ok",
    [(f"bearer {KEYS[0]}", True), (f"Bearer   {KEYS[0]}", True), (f"Basic {KEYS[0]}", False),
     (KEYS[0], False), ("Bearer", False), (f"Bearer {KEYS[0].upper()}", False)],
)
def test_authorization_header_forms(auth_server: Server, header: str, ok: bool):
    resp = httpx.get(auth_server.base_url + "/v1/models", headers={"Authorization": header})
    assert (resp.status_code == 200) is ok


@pytest.mark.parametrize(
    "raw_path",
    ["/health/", "/HEALTH", "/health/../v1/models", "//v1/models", "/v1/models/",
     "/health%2F..%2Fv1%2Fmodels", "/ready?x=/health", "/admin", "/metrics", "/docs",
     "/openapi.json", "/v1/models/../../health"],
)
def test_path_tricks_do_not_bypass_auth(auth_server: Server, raw_path: str):
    raw = raw_request(auth_server, f"GET {raw_path} HTTP/1.1\r\nHost: x\r\n"
                      "Connection: close\r\n\r\n".encode())
    status, _, body = split_response(raw)
    if raw_path == "/ready?x=/health":  # the allow-listed path itself, with a query
        assert status == 200
        return
    assert status == 401, (raw_path, body[:200])
    assert json.loads(body)["error"]["code"] == "invalid_api_key"


def test_cors_preflight_and_headers_for_the_allowed_origin(auth_server: Server):
    preflight = httpx.options(
        auth_server.base_url + "/v1/chat/completions",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"},
    )
    assert preflight.status_code == 200  # no key: preflights never carry credentials
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    denied = httpx.get(auth_server.base_url + "/v1/models", headers={"Origin": ORIGIN})
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == ORIGIN  # the page can read why
    ok = httpx.get(auth_server.base_url + "/v1/models",
                   headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEYS[0]}"})
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in ok.headers["access-control-expose-headers"].lower()


def test_cors_refuses_other_origins(auth_server: Server):
    preflight = httpx.options(
        auth_server.base_url + "/v1/models",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert_envelope(preflight, 403, "cors_origin_not_allowed")  # was a plain-text 400
    assert not [h for h in preflight.headers if h.startswith("access-control-")]
    resp = httpx.get(auth_server.base_url + "/v1/models",
                     headers={"Origin": "http://evil.example",
                              "Authorization": f"Bearer {KEYS[0]}"})
    assert resp.status_code == 200
    assert not [h for h in resp.headers if h.startswith("access-control-")]


def test_cors_is_off_by_default(server: Server):
    resp = httpx.get(server.base_url + "/health", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in resp.headers
    preflight = httpx.options(
        server.base_url + "/v1/models",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 405
    assert "access-control-allow-origin" not in preflight.headers


def test_metrics_can_be_made_public():
    guarded = TestClient(create_app(Settings(api_key="k")))
    assert guarded.get("/metrics").status_code == 401
    public = TestClient(create_app(Settings(api_key="k", metrics_public=True)))
    assert public.get("/metrics").status_code == 200
    assert public.get("/v1/models").status_code == 401


# What the official OpenAI JS SDK sends from a browser.
SDK_HEADERS = ("authorization,content-type,x-stainless-arch,x-stainless-lang,"
               "x-stainless-os,x-stainless-package-version,x-stainless-retry-count,"
               "x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout")


@pytest.mark.parametrize("origins", [ORIGIN, "*"])
def test_cors_preflight_of_the_openai_js_sdk(origins: str):
    client = TestClient(create_app(Settings(cors_origins=origins, cors_max_age_s=1234)))
    preflight = client.options("/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": SDK_HEADERS, "X-Request-ID": "pre-1"})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] in {ORIGIN, "*"}
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "x-stainless-os" in allowed and "authorization" in allowed
    assert preflight.headers["access-control-max-age"] == "1234"
    assert preflight.headers["x-request-id"] == "pre-1"


def test_cors_preflight_for_a_method_we_do_not_serve():
    client = TestClient(create_app(Settings(cors_origins=ORIGIN)))
    resp = client.options("/v1/models", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "PUT"})
    assert_envelope(resp, 400, "cors_method_not_allowed")
