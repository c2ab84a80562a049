"""Benchmark client (scripts/bench_common.py) against an in-process fake SSE server."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
FIRST_DELAY, GAP, N_CHUNKS = 0.1, 0.02, 6


@pytest.fixture(scope="module")
def bc() -> Iterator[ModuleType]:
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("bench_common")
    finally:
        sys.path.remove(str(SCRIPTS))


class FakeSSE(BaseHTTPRequestHandler):
    """Behaviour chosen by the request's "model": ok | nousage | incomplete | nodone | http500 |
    flaky (first attempt of each prompt: connection closed before any response)."""

    seen: set[str] = set()

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, obj: dict[str, Any] | str) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.end_headers()
        self.wfile.write(b'{"object": "list", "data": []}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = body["model"]
        key = body["messages"][0]["content"]
        if mode == "flaky" and key not in FakeSSE.seen:
            FakeSSE.seen.add(key)
            self.close_connection = True
            return
        if mode == "http500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "boom"}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        time.sleep(FIRST_DELAY)
        n = 3 if mode == "incomplete" else N_CHUNKS
        for i in range(n):
            if i:
                time.sleep(GAP)
            self._send(
                {"choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]}
            )
        if mode == "incomplete":
            return  # connection closes: no finish_reason, no [DONE]
        self._send({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        if mode != "nousage":
            # deliberately != N_CHUNKS: the usage count must win over chunk counting
            self._send(
                {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": N_CHUNKS + 2}}
            )
        if mode != "nodone":
            self._send("[DONE]")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeSSE)
    srv.daemon_threads = True
    th = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _level(
    bc: ModuleType, base_url: str, model: str, conc: int, n: int, retries: int = 0
) -> tuple[list[Any], float, dict[str, Any]]:
    async def go() -> tuple[list[Any], float]:
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
            target = bc.Target(model, base_url, model)
            prompts = [bc.build_prompt("essay", 64, 8, f"{model}{retries}-{i}") for i in range(n)]
            return await bc.run_level(client, target, prompts, conc, 8, 0.0, 0.0, retries)

    results, wall = asyncio.run(go())
    return results, wall, bc.aggregate(results, wall, conc)


def test_ok_stream_metrics(bc: ModuleType, base_url: str) -> None:
    results, wall, agg = _level(bc, base_url, "ok", conc=4, n=4)
    assert agg["errors"] == 0 and agg["num_requests"] == 4
    for r in results:
        assert r.error is None and r.finish_reason == "length" and r.usage_reported
        assert r.completion_tokens == N_CHUNKS + 2 and r.prompt_tokens == 11
        assert r.content_chunks == N_CHUNKS and len(r.itls) == N_CHUNKS - 1
        assert FIRST_DELAY <= r.ttft < FIRST_DELAY + 0.3
    assert FIRST_DELAY * 1e3 <= agg["ttft_ms_p50"] < (FIRST_DELAY + 0.3) * 1e3
    assert GAP * 1e3 * 0.8 <= agg["itl_ms_p50"] < GAP * 1e3 * 4
    # 4 concurrent streams: wall ~ one request, aggregate = 4 * tokens / wall
    assert wall < 2 * (FIRST_DELAY + N_CHUNKS * GAP) + 0.3
    assert agg["agg_tok_s"] == pytest.approx(4 * (N_CHUNKS + 2) / wall)
    assert agg["total_completion_tokens"] == 4 * (N_CHUNKS + 2)
    # per-stream decode rate: (tokens - 1) / (first -> last content chunk) ~ (7)/(5*GAP)
    expected = (N_CHUNKS + 1) / ((N_CHUNKS - 1) * GAP)
    assert expected / 3 < agg["stream_tok_s_mean"] <= expected * 1.1
    assert agg["finished_by_length"] == 4 and agg["mean_prompt_tokens"] == 11


def test_concurrency_limit_serializes(bc: ModuleType, base_url: str) -> None:
    _, wall, agg = _level(bc, base_url, "ok", conc=1, n=2)
    assert agg["errors"] == 0
    assert wall >= 2 * (FIRST_DELAY + (N_CHUNKS - 1) * GAP)


def test_usage_fallback_counts_chunks(bc: ModuleType, base_url: str) -> None:
    results, _, agg = _level(bc, base_url, "nousage", conc=2, n=2)
    assert agg["errors"] == 0
    assert all(not r.usage_reported and r.completion_tokens == N_CHUNKS for r in results)


@pytest.mark.parametrize(
    "model,kind",
    [("incomplete", "incomplete stream"), ("nodone", "incomplete stream"), ("http500", "HTTP 500")],
)
def test_errors_counted(bc: ModuleType, base_url: str, model: str, kind: str) -> None:
    results, _, agg = _level(bc, base_url, model, conc=2, n=2)
    assert agg["errors"] == 2 and agg["agg_tok_s"] == 0
    assert all(r.error is not None and r.error.startswith(kind) for r in results)
    assert list(agg["error_kinds"].values()) == [2]


def test_connection_refused_is_error(bc: ModuleType) -> None:
    results, _, agg = _level(bc, f"http://127.0.0.1:{bc.free_port()}/v1", "ok", 1, 1)
    assert agg["errors"] == 1 and results[0].error.startswith("ConnectError")


def test_percentile_and_prompt(bc: ModuleType) -> None:
    assert bc.percentile([], 50) is None
    assert bc.percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert bc.percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    p = bc.build_prompt("essay", 128, 64, "x")
    assert p == bc.build_prompt("essay", 128, 64, "x") and p.startswith("[x] ")
    assert 80 < len(p.split()) * bc.TOKENS_PER_WORD < 180
    assert "verbatim" in bc.build_prompt("rag", 256, 64)


def test_managed_server_lifecycle(bc: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "models").write_text('{"data": []}')
    port = bc.free_port()
    cmd = f"{sys.executable} -m http.server {port} --bind 127.0.0.1 --directory {tmp_path}"
    srv = bc.ManagedServer("fake", cmd, port, tmp_path / "log.txt")
    srv.start()
    try:
        assert srv.wait_ready(10.0) < 10.0
        mem = srv.memory()
        assert mem["rss_mb"] and mem["rss_mb"] > 1 and mem["leader_peak_rss_mb"]
    finally:
        srv.stop()
    assert srv.proc.poll() is not None
    assert bc.group_memory_mb(srv.proc.pid)["rss_mb"] is None


def test_connect_retries(bc: ModuleType, base_url: str) -> None:
    results, _, agg = _level(bc, base_url, "flaky", conc=2, n=2, retries=0)
    assert agg["errors"] == 2 and results[0].error.startswith("RemoteProtocolError")
    results, _, agg = _level(bc, base_url, "flaky", conc=2, n=2, retries=1)
    assert agg["errors"] == 0 and agg["connect_retries"] == 2
    assert all(r.retries == 1 and r.completion_tokens == N_CHUNKS + 2 for r in results)
    results, _, agg = _level(bc, base_url, "http500", conc=1, n=1, retries=3)
    assert agg["errors"] == 1 and results[0].retries == 0  # HTTP errors are not retried


def test_natural_prompts_are_the_default_and_ask_for_nothing_to_copy(bc: ModuleType) -> None:
    import bench_serving

    assert bench_serving.parse_args([]).prompt_style == "natural"
    prompts = {bc.build_prompt("natural", 128, 64, f"t{i}") for i in range(16)}
    assert len({p.split("] ", 1)[1] for p in prompts}) > 3  # a mix, not one prompt
    for p in prompts:
        assert "verbatim" not in p and "Continue this essay" not in p
        assert 60 < len(p.split()) * bc.TOKENS_PER_WORD < 220
    assert "COPY-HEAVY" in bench_serving.style_label("rag")
    assert "COPY-HEAVY" not in bench_serving.style_label("natural")
