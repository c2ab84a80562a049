"""/ready: 503 model_loading until the preload models are in, 503 shutting_down when draining."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from app.config import Settings
from app.lifecycle.registry import ModelRegistry, ModelSpec
from app.main import create_app
from tests.robustness.conftest import assert_envelope, chat_body

ROOT = Path(__file__).resolve().parents[2]


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


def _failing_registry(tiny_llama_dir: Path, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry([
        ModelSpec(id="tiny", source=str(tiny_llama_dir), preload=True, context_length=256),
        ModelSpec(id="lazy", source=str(tiny_llama_dir), context_length=256),
        ModelSpec(id="ghost", source=str(tmp_path / "missing.gguf"), preload=True),
    ])


def test_ready_names_a_failed_preload_and_its_cause(tiny_llama_dir: Path, tmp_path: Path):
    app = create_app(Settings(cache_dir=tmp_path), _failing_registry(tiny_llama_dir, tmp_path))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while app.state.manager.models["tiny"].state != "loaded" or \
                app.state.manager.models["ghost"].state != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        resp = client.get("/ready")
        assert_envelope(resp, 503, "model_load_failed")
        assert "ghost" in resp.json()["error"]["message"]
        # the same public cause a request for the model gets (no server paths)
        assert "does not exist" in resp.json()["error"]["message"]
        assert "lazy" not in resp.json()["error"]["message"]  # not a preload model


def test_require_models_exits_non_zero_when_a_preload_fails(tiny_llama_dir: Path,
                                                           tmp_path: Path):
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n  - id: ghost\n    source: {tmp_path / 'missing.gguf'}\n"
                      "    preload: true\n")
    proc = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "0", "--models-file", str(models),
         "--cache-dir", str(tmp_path / "cache"), "--require-models"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "--require-models, and preload model(s) ghost failed" in proc.stderr
