"""Model lifecycle: lazy load, keep-alive, memory budget eviction, admin API, reload."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

import app.lifecycle.manager as manager_module
from app.config import Settings
from app.lifecycle.registry import ModelRegistry, ModelSpec
from app.lifecycle.residency import files_size
from app.main import create_app
from tests.unit.live_server import live_server
from tests.unit.waiting import wait_until


def _spec(model_id: str, path: Path, **extra) -> ModelSpec:
    return ModelSpec(id=model_id, source=str(path), context_length=1024, **extra)


@contextlib.contextmanager
def _client(tmp_path: Path, specs: list[ModelSpec] | None = None, **settings):
    """A real server (true streaming, admin API on) and an httpx client for it."""
    cfg = Settings(cache_dir=tmp_path / "cache", admin=True, **settings)
    app = create_app(cfg, ModelRegistry(specs) if specs is not None else None)
    with live_server(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield client


def _chat(client: httpx.Client, model: str, **extra):
    return client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "temperature": 0, **extra})


def _state(client: httpx.Client, model: str) -> dict:
    return client.get(f"/v1/models/{model}").json()["metadata"]


@pytest.fixture
def counted_loads(monkeypatch):
    calls: list[str] = []
    real = manager_module.load_language_model

    def counting(spec, settings):
        calls.append(spec.id)
        time.sleep(0.3)  # make concurrent first requests overlap
        return real(spec, settings)

    monkeypatch.setattr(manager_module, "load_language_model", counting)
    return calls


def test_lazy_load_once_for_concurrent_first_requests(tmp_path, tiny_llama_dir, counted_loads):
    with _client(tmp_path, [_spec("a", tiny_llama_dir)]) as client:
        assert _state(client, "a")["state"] == "unloaded"
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: _chat(client, "a").status_code, range(4)))
        assert codes == [200] * 4
        assert counted_loads == ["a"]
        meta = _state(client, "a")
        assert meta["state"] == "loaded" and meta["memory_bytes"] > 0


def test_keep_alive_zero_and_expiry(tmp_path, tiny_llama_dir):
    specs = [_spec("now", tiny_llama_dir, keep_alive=0), _spec("soon", tiny_llama_dir,
                                                                  keep_alive=1)]
    with _client(tmp_path, specs) as client:
        assert _chat(client, "now").status_code == 200
        wait_until(lambda: _state(client, "now")["state"] == "unloaded")
        assert _chat(client, "soon").status_code == 200
        assert _state(client, "soon")["state"] == "loaded"
        wait_until(lambda: _state(client, "soon")["state"] == "unloaded", timeout=6)
        assert _chat(client, "soon").status_code == 200  # and it comes back on demand


def test_budget_evicts_lru_idle_model_but_never_a_streaming_one(tmp_path, tiny_llama_dir):
    size = files_size(tiny_llama_dir)
    specs = [_spec(name, tiny_llama_dir) for name in ("a", "b")]
    with _client(tmp_path, specs, memory_budget_bytes=int(size * 1.5)) as client:
        assert _chat(client, "a").status_code == 200
        assert _chat(client, "b").status_code == 200  # needs a's room: a is idle, evicted
        assert _state(client, "a")["state"] == "unloaded"
        with client.stream("POST", "/v1/chat/completions", json={
            "model": "b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 800,
            "temperature": 0, "stream": True, "ignore_eos": True,
        }) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
            blocked = _chat(client, "a")  # would need b's memory while b streams
            assert blocked.status_code == 503 and "budget" in blocked.json()["error"]["message"]
            rest = list(lines)
        assert [ln for ln in rest if ln][-1] == "data: [DONE]"
        assert _state(client, "b")["state"] == "loaded"
        assert _chat(client, "a").status_code == 200  # b is idle now: evicted for a
        assert _state(client, "b")["state"] == "unloaded"


def test_admin_load_unload_and_in_use_conflict(tmp_path, tiny_llama_dir):
    with _client(tmp_path, [_spec("a", tiny_llama_dir)]) as client:
        assert client.post("/admin/models/a/load").json()["state"] == "loaded"
        with client.stream("POST", "/v1/chat/completions", json={
            "model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 800,
            "stream": True, "temperature": 0, "ignore_eos": True,
        }) as stream:
            lines = stream.iter_lines()
            next(lines)
            busy = client.post("/admin/models/a/unload")
            assert busy.status_code == 409 and busy.json()["error"]["code"] == "model_in_use"
            assert [ln for ln in lines if ln][-1] == "data: [DONE]"
        assert client.post("/admin/models/a/unload").json()["state"] == "unloaded"
        assert client.post("/admin/models/nope/load").status_code == 404


def test_reload_adds_and_removes_without_failing_in_flight(tmp_path, tiny_llama_dir):
    models_file = tmp_path / "models.yaml"

    def write(ids: list[str]) -> None:
        models_file.write_text(yaml.safe_dump(
            {"models": [{"id": i, "source": str(tiny_llama_dir), "context_length": 1024}
                        for i in ids]}))

    write(["old"])
    with _client(tmp_path, models_file=models_file) as client:
        with client.stream("POST", "/v1/chat/completions", json={
            "model": "old", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 800,
            "stream": True, "temperature": 0, "ignore_eos": True,
        }) as stream:
            lines = stream.iter_lines()
            next(lines)
            write(["new"])
            result = client.post("/admin/reload").json()
            assert result["added"] == ["new"] and result["removed"] == ["old"]
            rest = [ln for ln in lines if ln]
        assert rest[-1] == "data: [DONE]" and not any('"error"' in ln for ln in rest)
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["new"]
        assert _chat(client, "old").status_code == 404
        assert _chat(client, "new").status_code == 200
        models_file.write_text("models: [")
        assert client.post("/admin/reload").status_code == 400
        assert _chat(client, "new").status_code == 200


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_load_unload_loop_leaves_no_growth(tmp_path, tiny_llama_dir):
    import mlx.core as mx

    with _client(tmp_path, [_spec("a", tiny_llama_dir)]) as client:
        client.post("/admin/models/a/load")
        client.post("/admin/models/a/unload")
        baseline_rss, baseline_mlx = _rss_bytes(), mx.get_active_memory()
        for _ in range(20):
            assert client.post("/admin/models/a/load").json()["state"] == "loaded"
            assert _chat(client, "a").status_code == 200
            assert client.post("/admin/models/a/unload").json()["state"] == "unloaded"
        # one leaked copy of the model per cycle would be 20 x ~0.5 MB; allow small MLX state
        assert mx.get_active_memory() <= baseline_mlx + 64 * 1024
        assert _rss_bytes() < baseline_rss * 1.10
