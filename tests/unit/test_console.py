"""The web console's routes without a browser: what is served, with which headers, what the
key guard lets through, ``--no-ui``, and that the package ships every file the page loads."""

from __future__ import annotations

import argparse
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.__main__ import _add_settings_flags, _settings
from app.api.console.router import STATIC, assets
from app.config import Settings
from app.main import create_app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Settings()))


def _page_references(html: str) -> list[str]:
    return re.findall(r'(?:href|src)="(/console/[^"]+)"', html)


def _module_imports(source: str) -> list[str]:
    return re.findall(r'^import .* from "\./([^"]+)";', source, flags=re.MULTILINE)


def test_the_page_and_every_file_it_loads_are_served_with_their_types(client: TestClient):
    page = client.get("/", headers={"X-Request-ID": "console-1", "X-House-ID": "house-9"})
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["x-request-id"] == "console-1"  # the house contract holds here too
    assert page.headers["x-house-id"] == "house-9"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    refs = _page_references(page.text)
    assert not re.search(r'(?:href|src)="(?!/console/|data:)', page.text)  # no CDN
    assert "/console/js/main.js" in refs and any(r.endswith(".css") for r in refs)
    for ref in refs:
        resp = client.get(ref)
        assert resp.status_code == 200, ref
        expected = "text/css" if ref.endswith(".css") else "text/javascript"
        assert resp.headers["content-type"].startswith(expected), ref


def test_every_module_import_resolves_to_a_served_file(client: TestClient):
    """A broken import breaks the whole page; this catches it where no browser runs."""
    scripts = [p for p in assets() if p.endswith(".js")]
    assert len(scripts) >= 8
    for path in scripts:
        source = client.get(path).text
        # nothing from another origin: modules are relative, requests go to this server
        assert not re.search(r'(?:from|import)\s*\(?\s*"(?!\./)', source), path
        assert not re.search(r'fetch\(\s*[`"\']https?:', source), path
        for name in _module_imports(source):
            target = path.rsplit("/", 1)[0] + "/" + name
            assert client.get(target).status_code == 200, f"{path} imports missing {name}"


def test_unknown_console_files_are_404_envelopes(client: TestClient):
    resp = client.get("/console/js/nope.js")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    assert resp.json()["htdi"]["requestId"] == resp.headers["x-request-id"]


def test_console_config_reflects_the_server(client: TestClient):
    config = client.get("/console/config").json()
    assert config["admin"] is False and config["metrics"] is True  # admin routes are opt-in
    with_admin = TestClient(create_app(Settings(admin=True)))
    assert with_admin.get("/console/config").json()["admin"] is True
    assert config["keep_alive_default_s"] == 1800.0
    assert config["htdi"]["requestId"]
    no_metrics = TestClient(create_app(Settings(metrics_enabled=False)))
    assert no_metrics.get("/console/config").json()["metrics"] is False


def test_models_say_whether_their_files_are_cached(tmp_path: Path):
    """The models panel's "not cached" state: an empty cache has none of the defaults."""
    empty = TestClient(create_app(Settings(cache_dir=tmp_path, preload=False)))
    models = empty.get("/v1/models").json()["data"]
    assert models and all(m["metadata"]["cached"] is False for m in models)


def test_with_a_key_only_the_page_and_its_files_are_public():
    guarded = TestClient(create_app(Settings(api_key="secret")))
    assert guarded.get("/").status_code == 200
    assert guarded.get("/console/js/main.js").status_code == 200
    for path in ("/console/config", "/console/js/nope.js", "/console/", "/console",
                 "/index.html", "/v1/models"):
        assert guarded.get(path).status_code == 401, path
    auth = {"Authorization": "Bearer secret"}
    assert guarded.get("/console/config", headers=auth).status_code == 200


def test_no_ui_turns_the_console_off_and_off_the_allow_list(monkeypatch):
    off = TestClient(create_app(Settings(no_ui=True)))
    assert off.get("/").status_code == 404
    assert off.get("/console/js/main.js").status_code == 404
    guarded = TestClient(create_app(Settings(no_ui=True, api_key="secret")))
    assert guarded.get("/").status_code == 401
    monkeypatch.setenv("MLX_SERVER_NO_UI", "1")
    assert Settings().no_ui is True
    monkeypatch.delenv("MLX_SERVER_NO_UI")
    parser = argparse.ArgumentParser()
    _add_settings_flags(parser, None)
    assert _settings(parser.parse_args(["--no-ui"])).no_ui is True
    assert _settings(parser.parse_args([])).no_ui is False


def test_the_package_data_globs_ship_every_console_file():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["app.api.console"]
    package = STATIC.parent
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            rel = path.relative_to(package).as_posix()
            assert any(fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs), rel


def test_console_files_stay_small():
    for path in STATIC.rglob("*"):
        if path.is_file():
            assert len(path.read_text().splitlines()) <= 400, path
