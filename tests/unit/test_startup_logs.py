"""What the log tells a newcomer: a ready line with the address, a failed model named once
with its cause, and no access lines for successful health and metrics polls."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from fastapi.testclient import TestClient

from app.config import Settings
from app.core.request_log import ACCESS_LOGGER
from app.lifecycle.registry import ModelRegistry, ModelSpec
from app.main import create_app


def _serve(registry: ModelRegistry, tmp_path: Path, caplog, **settings) -> list[str]:
    with caplog.at_level(logging.INFO), TestClient(
            create_app(Settings(cache_dir=tmp_path, port=8123, **settings), registry)) as client:
        deadline = time.monotonic() + 60
        while not any("models ready after" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client.get("/health")
        client.get("/v1/models")
    return [r.getMessage() for r in caplog.records]


def test_ready_line_names_the_address_and_models(tiny_llama_dir: Path, tmp_path: Path, caplog):
    registry = ModelRegistry([ModelSpec(id="tiny", source=str(tiny_llama_dir), preload=True)])
    lines = _serve(registry, tmp_path, caplog)
    assert "ready: http://127.0.0.1:8123 (models: tiny)" in lines
    access = [json.loads(m) for m in lines if m.startswith("{")]
    routes = [a["route"] for a in access]
    assert "/v1/models" in routes and "/health" not in routes  # probes stay out


def test_a_failed_preload_is_named_once_with_its_cause(tmp_path: Path, caplog):
    registry = ModelRegistry([ModelSpec(id="ghost", source=str(tmp_path / "none.gguf"),
                                        preload=True)])
    lines = _serve(registry, tmp_path, caplog, access_log_probes=True)
    failures = [m for m in lines if m.startswith("model ghost failed to load: ")]
    assert len(failures) == 1 and "none.gguf" in failures[0]
    assert not any("Nones" in m for m in lines)
    assert not any(m.startswith("ready: ") for m in lines)
    assert any('"route": "/health"' in m for m in lines)  # --access-log-probes
    assert ACCESS_LOGGER


def test_context_length_comes_from_the_model_when_the_entry_has_none(
        tiny_llama_dir: Path, tmp_path: Path, caplog):
    own = json.loads((tiny_llama_dir / "config.json").read_text())["max_position_embeddings"]
    registry = ModelRegistry([
        ModelSpec(id="own", source=str(tiny_llama_dir), preload=True),
        ModelSpec(id="set", source=str(tiny_llama_dir), preload=True, context_length=64)])
    _serve(registry, tmp_path, caplog)
    assert registry.get("own").context_length == own != 2048
    assert registry.get("set").context_length == 64
