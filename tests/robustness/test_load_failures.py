"""Issue 23 item 13 (load failures): clients see the model id and a reason, never the server's
paths, and a failed model is not loaded again for every request (back-off, Retry-After)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from tests.robustness.conftest import assert_envelope, assert_still_serving, start_server


def _values(obj: object, key: str):
    """Every value stored under ``key`` anywhere in a JSON document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _values(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _values(v, key)


def test_load_failure_hides_paths_and_backs_off(models_file: Path,
                                                tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("load-failures")
    missing = root / "secret-cache-dir" / "no-such-model.gguf"
    registry = yaml.safe_load(models_file.read_text())
    registry["models"].append({"id": "broken", "type": "lm", "source": str(missing),
                               "family": "llama", "context_length": 512, "preload": False})
    models = root / "models.yaml"
    models.write_text(yaml.safe_dump(registry))
    server = start_server(root, models, "--admin")  # so /v1/models shows the error detail
    body = {"model": "broken", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            for _ in range(3):
                resp = client.post("/v1/chat/completions", json=body)
                error = assert_envelope(resp, 503, code="model_load_failed")
                assert "'broken'" in error["message"]
                assert "secret-cache-dir" not in resp.text and str(root) not in resp.text
                assert int(resp.headers["retry-after"]) >= 1
            entry = next(m for m in client.get("/v1/models").json()["data"]
                         if m["id"] == "broken")
            errors = list(_values(entry, "error"))
            assert errors and all("secret-cache-dir" not in e for e in errors), errors
        tries = server.log_text().count("model broken failed to load")
        assert tries == 1, tries  # three requests, one load attempt
        assert_still_serving(server.base_url)
    finally:
        assert server.stop() == 0
