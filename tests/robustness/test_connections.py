"""Connection exhaustion (issue 23 #1): idle and slow connections cannot starve the server.

The server runs with a soft open-file limit of 256 (as many systems start it) and a cap of
8 connections; the test holds far more idle and trickling connections than either.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.robustness.conftest import Server, chat_body, split_response, start_server

CAP = 8
SOFT_NOFILE = 256


@contextlib.contextmanager
def _soft_nofile(limit: int) -> Iterator[None]:
    """Children started inside inherit this soft open-file limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def capped(models_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with _soft_nofile(SOFT_NOFILE):
        srv = start_server(
            tmp_path_factory.mktemp("capped-server"), models_file,
            "--max-connections", str(CAP), "--header-timeout-s", "2", "--body-timeout-s", "2",
            "--keep-alive-timeout-s", "1", "--max-batch-size", "8", "--no-access-log",
            env={"MLX_SERVER_TEST_TOKEN_DELAY_MS": "20"},
        )
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log_text()[-3000:]


def _connect(server: Server) -> socket.socket:
    url = urlparse(server.base_url)
    return socket.create_connection((url.hostname, url.port), timeout=10)


def _open_fds(server: Server) -> int:
    return len(list(Path(f"/proc/{server.process.pid}/fd").iterdir()))


def _timed(fn) -> tuple[float, httpx.Response]:
    t0 = time.monotonic()
    resp = fn()
    return time.monotonic() - t0, resp


def test_idle_and_slow_connections_past_the_cap_do_not_starve_requests(capped: Server):
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    stop = threading.Event()

    def trickle() -> None:  # a header, one byte at a time, never finished
        while not stop.is_set():
            for sock in list(slow):
                with contextlib.suppress(OSError):
                    sock.send(b"X")
            stop.wait(0.5)

    thread = threading.Thread(target=trickle, daemon=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with _soft_nofile(hard), contextlib.ExitStack() as cleanup:
        cleanup.callback(stop.set)
        for _ in range(2100):  # past the 2048 descriptors mlx-lm would leave the server
            with contextlib.suppress(OSError):
                idle.append(cleanup.enter_context(_connect(capped)))
        for _ in range(20):
            with contextlib.suppress(OSError):
                sock = cleanup.enter_context(_connect(capped))
                sock.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                slow.append(sock)
        thread.start()
        # The server takes the flood from its accept queue, closing the longest-idle
        # connections as it goes; the cap keeps its descriptors far below the sockets opened.
        deadline = time.monotonic() + 15
        while _open_fds(capped) >= 120 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _open_fds(capped) < 120
        with httpx.Client(base_url=capped.base_url, timeout=5) as client:
            seconds, health = _timed(lambda: client.get("/health"))
            assert health.status_code == 200 and seconds < 1.0, seconds
            seconds, chat = _timed(lambda: client.post("/v1/chat/completions",
                                                       json=chat_body(max_tokens=1)))
            assert chat.status_code == 200 and seconds < 1.0, (seconds, chat.text)
        assert _open_fds(capped) < 120


def test_the_soft_open_file_limit_is_raised(capped: Server):
    limits = Path(f"/proc/{capped.process.pid}/limits").read_text()
    line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    # raised to the hard limit, which stays where it was (importing mlx-lm sets 2048, 4096)
    assert soft == hard and int(soft) > 2048


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_header_that_never_ends_gets_408(capped: Server):
    with _connect(capped) as sock:
        sock.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        t0 = time.monotonic()
        raw = _read_all(sock, 10)
    assert 1.5 < time.monotonic() - t0 < 6
    status, headers, body = split_response(raw)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "request_timeout"
    with _connect(capped) as sock:  # nothing sent at all: closed without a word
        t0 = time.monotonic()
        assert _read_all(sock, 10) == b""
    assert 1.5 < time.monotonic() - t0 < 6


def test_a_body_that_never_ends_gets_408(capped: Server):
    with _connect(capped) as sock:
        sock.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\"")
        raw = _read_all(sock, 10)
    status, headers, body = split_response(raw)
    error = json.loads(body)["error"]
    assert status == 408 and error["code"] == "request_timeout", body
    assert headers["x-request-id"] == json.loads(body)["htdi"]["requestId"]


def test_kept_alive_connections_close_when_idle(capped: Server):
    with _connect(capped) as sock:
        sock.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        t0 = time.monotonic()
        raw = _read_all(sock, 10)  # the response, then the close after the idle timeout
    assert raw.startswith(b"HTTP/1.1 200") and 0.5 < time.monotonic() - t0 < 4


def test_past_the_cap_with_every_connection_busy_gets_503(capped: Server):
    body = chat_body(max_tokens=120, ignore_eos=True, stream=True)
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(base_url=capped.base_url, timeout=60))
                   for _ in range(CAP)]
        streams = [stack.enter_context(c.stream("POST", "/v1/chat/completions", json=body))
                   for c in clients]
        for stream in streams:
            assert stream.status_code == 200
        with _connect(capped) as sock:
            sock.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, headers, raw = split_response(_read_all(sock, 10))
        assert status == 503 and headers["retry-after"] == "1"
        error = json.loads(raw)["error"]
        assert error["code"] == "too_many_connections" and error["type"] == "server_error"
    assert httpx.get(capped.base_url + "/health", timeout=5).status_code == 200
