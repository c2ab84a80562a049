"""SIGTERM: readiness 503 at once, new requests 503, in-flight requests finish, exit 0.

Each test starts its own server whose engine is slowed by the TEST-ONLY per-token delay
(``MLX_SERVER_TEST_TOKEN_DELAY_MS``), so ten streams are surely still running when the
signal arrives.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.robustness.conftest import (
    Server,
    assert_envelope,
    chat_body,
    start_server,
)

STREAMS = 10
DELAY = {"MLX_SERVER_TEST_TOKEN_DELAY_MS": "3"}  # 10 sequences: ~30 ms per decode step


class Call(threading.Thread):
    """One request in a thread; ``started`` is set once its first bytes arrived."""

    def __init__(self, base_url: str, max_tokens: int, stream: bool = True) -> None:
        super().__init__(daemon=True)
        self.base_url, self.max_tokens, self.stream = base_url, max_tokens, stream
        self.started = threading.Event()
        self.lines: list[str] = []
        self.status: int | None = None
        self.body: dict | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        body = chat_body(max_tokens=self.max_tokens, stream=self.stream,
                         stream_options={"include_usage": True} if self.stream else None)
        try:
            with httpx.Client(base_url=self.base_url, timeout=120) as client:
                if not self.stream:
                    self.started.set()
                    resp = client.post("/v1/chat/completions", json=body)
                    self.status, self.body = resp.status_code, resp.json()
                    return
                with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    self.status = resp.status_code
                    for line in resp.iter_lines():
                        if line.startswith("data: "):
                            self.lines.append(line[6:])
                            self.started.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.started.set()


def _start(models_file: Path, workdir: Path, drain_timeout: float) -> Server:
    return start_server(workdir, models_file, "--max-batch-size", "16",
                        "--drain-timeout-s", str(drain_timeout), env=DELAY)


def _launch(server: Server, max_tokens: int, extra_plain: int = 0) -> list[Call]:
    calls = [Call(server.base_url, max_tokens) for _ in range(STREAMS)]
    calls += [Call(server.base_url, max_tokens, stream=False) for _ in range(extra_plain)]
    for call in calls:
        call.start()
    for call in calls:
        assert call.started.wait(60), "a request never started"
    time.sleep(0.2)  # the plain requests are queued or running too
    return calls


def _join(calls: list[Call], timeout: float = 60) -> None:
    for call in calls:
        call.join(timeout)
        assert not call.is_alive(), "a request never finished"
        assert call.error is None, repr(call.error)
        assert call.status == 200


def test_sigterm_drains_in_flight_requests_then_exits_0(models_file: Path, tmp_path: Path):
    server = _start(models_file, tmp_path, drain_timeout=60)
    calls = _launch(server, max_tokens=120, extra_plain=2)
    server.process.send_signal(signal.SIGTERM)

    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        assert_envelope(client.get("/ready"), 503, "shutting_down")
        assert client.get("/health").status_code == 200
        refused = client.post("/v1/chat/completions", json=chat_body())
        assert_envelope(refused, 503, "shutting_down")
        assert all(c.is_alive() for c in calls), "requests ended before the drain was tested"

    _join(calls)
    for call in calls[:STREAMS]:
        assert call.lines[-1] == "[DONE]"
        events = [json.loads(line) for line in call.lines[:-1]]
        assert not any("error" in e for e in events)
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        assert events[-1]["usage"]["completion_tokens"] == 120
    for call in calls[STREAMS:]:
        assert call.body["usage"]["completion_tokens"] == 120
    assert server.process.wait(timeout=30) == 0, server.log_text()[-3000:]
    log = server.log_text()
    assert f"draining: {STREAMS + 2} request(s) in flight" in log
    assert "drained; 0 request(s) left" in log


@pytest.mark.parametrize("how", ["second_signal", "drain_timeout"])
def test_abort_ends_every_stream_with_a_final_event_and_exits_0(
    models_file: Path, tmp_path: Path, how: str
):
    server = _start(models_file, tmp_path, drain_timeout=60 if how == "second_signal" else 1)
    calls = _launch(server, max_tokens=250)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    if how == "second_signal":
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)

    _join(calls, timeout=30)
    assert time.monotonic() - started < 15  # far sooner than the 250 tokens would take
    for call in calls:
        lines = call.lines
        assert lines[-1] == "[DONE]"
        error = json.loads(lines[-2])["error"]
        assert error["code"] == "shutting_down" and error["type"] == "server_error"
        assert not any(json.loads(x)["choices"][0]["finish_reason"]
                       for x in lines[1:-2] if json.loads(x).get("choices"))
    assert server.process.wait(timeout=30) == 0, server.log_text()[-3000:]
    assert "aborting" in server.log_text()

