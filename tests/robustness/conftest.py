"""Real server processes on free loopback ports, serving tiny random models.

``server`` is shared by the session: small limits (so limit tests are cheap) and the
TEST-ONLY fault hook (``app/core/faults.py``) switched on. Tests that must stop a server
(shutdown, auth) start their own with :func:`start_server`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FAULT_AFTER_TOKENS = 3
# The shared server's limits (each is a CLI flag, tested by test_bad_inputs.py).
LIMITS = {
    "max_body_bytes": 65536,
    "max_header_bytes": 8192,
    "max_json_depth": 32,
    "max_messages": 16,
    "max_stop_sequences": 4,
    "max_n": 4,
    "max_embedding_inputs": 8,
}
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict]:
        """The JSON request lines of the server's log."""
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{") and '"event": "request"' in line:
                out.append(json.loads(line))
        return out

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    workdir: Path,
    models_file: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 90,
    wait_ready: bool = True,
) -> Server:
    """``python -m app serve`` on a free loopback port; waits for /ready (or /health)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--models-file", str(models_file), "--cache-dir", str(workdir / "cache"),
           "--offline", *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env=full_env, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    probe = "/ready" if wait_ready else "/health"
    deadline = time.monotonic() + ready_timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(server.base_url + probe, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop(signal.SIGKILL)
            pytest.fail(f"server not ready after {ready_timeout}s:\n{server.log_text()}")
        time.sleep(0.1)


def limit_flags(limits: dict[str, int]) -> list[str]:
    flags: list[str] = []
    for name, value in limits.items():
        flags += ["--" + name.replace("_", "-"), str(value)]
    return flags


@pytest.fixture(scope="session")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with a tiny llama (chat, completions; fill-in-the-middle tokens, so /infill
    and ``suffix`` are fuzzed past the 400 for models without them) and a tiny BERT
    (embeddings)."""
    from tests.unit.test_embedding_model import make_tiny_bert
    from tests.unit.tiny_llama import build_tiny_llama

    root = tmp_path_factory.mktemp("robustness-models")
    llama = build_tiny_llama(root / "tiny-llama", context_length=512, extra_specials=(
        "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    bert = make_tiny_bert(root / "tiny-bert")
    registry = {"models": [
        {"id": "tiny", "type": "lm", "source": str(llama), "family": "llama",
         "context_length": 512, "aliases": ["default"], "limits": {"max_tokens": 256},
         "preload": True},
        {"id": "tiny-embed", "type": "embedding", "source": str(bert), "family": "bert",
         "context_length": 48, "dimensions": 32, "preload": True},
    ]}
    path = root / "models.yaml"
    path.write_text(yaml.safe_dump(registry))
    return path


@pytest.fixture(scope="session")
def server(models_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("robustness-server")
    srv = start_server(
        workdir, models_file, *limit_flags(LIMITS), "--max-batch-size", "4",
        "--queue-depth", "128",
        # A small prefix cache fills in the first disconnect round, so memory has a
        # steady state to return to (its real footprint is many times its byte count).
        "--prefix-cache-bytes", "1000000",
        env={"MLX_SERVER_TEST_FAULT_AFTER_TOKENS": str(FAULT_AFTER_TOKENS)},
    )
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"shared server exited with {code}:\n{srv.log_text()[-4000:]}"


@pytest.fixture()
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


def chat_body(**overrides: object) -> dict:
    return {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "temperature": 0,
            **overrides}


def sse_lines(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def assert_envelope(resp: httpx.Response, status: int, code: str | None = None,
                    param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] in {"invalid_request_error", "server_error", "rate_limit_error"}
    assert set(error) >= {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    assert "Traceback" not in resp.text and "/site-packages/" not in resp.text
    assert body["htdi"]["requestId"] == resp.headers["x-request-id"]
    return error


def assert_still_serving(base_url: str) -> None:
    """Liveness and one normal generation, after whatever the test did."""
    with httpx.Client(base_url=base_url, timeout=60) as c:
        assert c.get("/health").status_code == 200
        resp = c.post("/v1/chat/completions", json=chat_body(max_tokens=2))
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == 2


def raw_request(server: Server, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes on a fresh connection; return everything the server answered."""
    url = urlparse(server.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return status, headers, body


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/robustness/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.robustness)
