"""/ready: 503 model_loading until the preload models are in, 503 shutting_down when draining."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from app.config import Settings
from app.lifecycle.registry import ModelRegistry, ModelSpec
from app.main import create_app
from tests.robustness.conftest import assert_envelope, chat_body


def test_ready_follows_model_loading_and_draining(tiny_llama_dir: Path, tmp_path: Path):
    registry = ModelRegistry([ModelSpec(id="tiny", source=str(tiny_llama_dir), preload=True,
                                        context_length=256, aliases=["default"])])
    app = create_app(Settings(cache_dir=tmp_path), registry)
    manager = app.state.manager
    gate = threading.Event()
    load = manager._start_language_model

    async def held_load(spec: ModelSpec):
        await asyncio.to_thread(gate.wait, 60)
        return await load(spec)

    manager._start_language_model = held_load
    with TestClient(app) as client:
        loading = client.get("/ready")
        assert_envelope(loading, 503, "model_loading")
        assert loading.headers["retry-after"] == "2"
        assert client.get("/health").status_code == 200
        assert_envelope(client.post("/v1/chat/completions", json=chat_body()), 503,
                        "model_loading")
        gate.set()
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/ready").json() == {"status": "ready", "models": {"tiny": "loaded"}}
        assert client.get("/metrics").text.count('mlx_server_draining 0.0') == 1

        app.state.lifecycle.begin_drain()  # what the first SIGTERM does
        assert_envelope(client.get("/ready"), 503, "shutting_down")
        assert_envelope(client.post("/v1/chat/completions", json=chat_body()), 503,
                        "shutting_down")
        assert client.get("/health").status_code == 200
        assert "mlx_server_draining 1.0" in client.get("/metrics").text
