"""Backpressure and cancellation over real HTTP (uvicorn in a thread, true streaming)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx

from app.config import Settings
from app.lifecycle.registry import ModelRegistry, ModelSpec
from app.main import create_app
from tests.unit.live_server import live_server
from tests.unit.waiting import wait_until

LONG = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 900, "temperature": 0,
        "ignore_eos": True}


@contextlib.contextmanager
def _server(tmp_path: Path, model_dir: Path, **settings):
    cfg = Settings(cache_dir=tmp_path / "cache", **settings)
    spec = ModelSpec(id="tiny", source=str(model_dir), context_length=1024, preload=True)
    app = create_app(cfg, ModelRegistry([spec]))
    with live_server(app, ready_path="/ready") as base, httpx.Client(base_url=base,
                                                                     timeout=60) as client:
        yield app, client


def _engine(app):
    return app.state.manager.models["tiny"].engine


def test_queue_full_is_429_at_once_for_stream_and_non_stream(tmp_path, tiny_llama_dir):
    with _server(tmp_path, tiny_llama_dir, max_batch_size=1, queue_depth=1) as (app, client):
        with client.stream("POST", "/v1/chat/completions",
                           json={"model": "tiny", "stream": True, **LONG}) as running:
            lines = running.iter_lines()
            next(lines)
            wait_until(lambda: _engine(app).stats.running == 1)
            with client.stream("POST", "/v1/chat/completions",
                               json={"model": "tiny", "stream": True, **LONG}) as queued:
                wait_until(lambda: _engine(app).stats.waiting == 1)
                for stream in (False, True):
                    started = time.monotonic()
                    resp = client.post("/v1/chat/completions",
                                       json={"model": "tiny", "stream": stream, **LONG})
                    assert time.monotonic() - started < 2.0
                    assert resp.status_code == 429, resp.text
                    assert resp.json()["error"]["code"] == "queue_full"
                    assert int(resp.headers["retry-after"]) >= 1
                assert queued.status_code == 200
            # leaving the block closes the queued stream: it never started, it is dropped
            wait_until(lambda: _engine(app).stats.waiting == 0)


def test_disconnected_stream_frees_its_slot(tmp_path, tiny_llama_dir):
    with _server(tmp_path, tiny_llama_dir, max_batch_size=1) as (app, client):
        with client.stream("POST", "/v1/chat/completions",
                           json={"model": "tiny", "stream": True, **LONG}) as stream:
            lines = stream.iter_lines()
            next(lines)
            next(lines)
            wait_until(lambda: _engine(app).stats.running == 1)
        wait_until(lambda: _engine(app).stats.running == 0)  # the hang-up cancelled it
        started = time.monotonic()
        quick = client.post("/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert quick.status_code == 200
        assert time.monotonic() - started < 5.0


def test_disconnected_non_stream_request_is_cancelled(tmp_path, tiny_llama_dir):
    with _server(tmp_path, tiny_llama_dir, max_batch_size=1) as (app, client):
        with contextlib.suppress(httpx.TimeoutException):
            client.post("/v1/chat/completions", json={"model": "tiny", **LONG}, timeout=0.5)
        wait_until(lambda: _engine(app).stats.running == 0)
        assert _engine(app).stats.generated_tokens < 900
