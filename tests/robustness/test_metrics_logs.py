"""/metrics carries the vLLM-named series, and every request leaves one JSON log line."""

from __future__ import annotations

import json
import logging
import time
import uuid

import httpx
from fastapi.testclient import TestClient

from app.config import Settings
from app.core.request_log import ACCESS_LOGGER
from app.main import create_app
from tests.robustness.conftest import Server, chat_body

SERIES = [
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total", "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_count", "vllm:inter_token_latency_seconds_count",
    "vllm:e2e_request_latency_seconds_count", "vllm:request_queue_time_seconds_count",
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "http_requests_total", "http_request_duration_seconds_count",
    "mlx_server_embedding_requests_total", "mlx_server_embedding_request_latency_seconds_count",
    "mlx_server_embedding_forward_passes_total", "mlx_server_model_loaded",
    "mlx_server_http_requests_in_flight", "mlx_server_draining",
]


def _find_log(server: Server, request_id: str, timeout: float = 5) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for record in server.log_records():
            if record["request_id"] == request_id:
                return record
        assert time.monotonic() < deadline, f"no log line for {request_id}"
        time.sleep(0.05)


def test_generation_moves_the_counters_by_its_usage(server: Server, client: httpx.Client):
    before = {name: server.metric(name, model_name="tiny") for name in (
        "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
        "vllm:e2e_request_latency_seconds_count", "vllm:time_to_first_token_seconds_count")}
    length_before = server.metric("vllm:request_success_total", model_name="tiny",
                                  finished_reason="length")
    http_before = server.metric("http_requests_total", route="/v1/chat/completions",
                                status="200")
    usage = client.post("/v1/chat/completions", json=chat_body(max_tokens=6)).json()["usage"]

    def delta(name: str) -> float:
        return server.metric(name, model_name="tiny") - before[name]

    assert delta("vllm:prompt_tokens_total") == usage["prompt_tokens"]
    assert delta("vllm:generation_tokens_total") == 6
    assert delta("vllm:e2e_request_latency_seconds_count") == 1
    assert delta("vllm:time_to_first_token_seconds_count") == 1
    assert server.metric("vllm:request_success_total", model_name="tiny",
                         finished_reason="length") == length_before + 1
    assert server.metric("http_requests_total", route="/v1/chat/completions",
                         status="200") == http_before + 1


def test_every_documented_series_is_exported(server: Server, client: httpx.Client):
    assert client.post("/v1/embeddings", json={"model": "tiny-embed", "input": "hi"}
                       ).status_code == 200
    client.post("/v1/chat/completions", json=chat_body(max_tokens=3, stream=True))
    text = client.get("/metrics").text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    missing = [s for s in SERIES if s not in names]
    assert not missing, missing
    assert server.metric("mlx_server_model_loaded", model_name="tiny", type="lm") == 1


def test_unmatched_paths_share_one_label(server: Server, client: httpx.Client):
    """Raw paths never become label values (unbounded cardinality)."""
    other_before = server.metric("http_requests_total", route="other", status="404")
    assert client.get("/v1/no-such-route-xyz").status_code == 404
    assert server.metric("http_requests_total", route="other", status="404") == other_before + 1
    assert "no-such-route-xyz" not in client.get("/metrics").text


def test_one_json_log_line_per_request_without_prompt_text(server: Server,
                                                           client: httpx.Client):
    request_id = f"log-{uuid.uuid4().hex}"
    secret = f"my secret prompt {uuid.uuid4().hex}"
    resp = client.post(
        "/v1/chat/completions",
        json=chat_body(max_tokens=5, messages=[{"role": "user", "content": secret}],
                       metadata={"source": "robustness"}),
        headers={"X-Request-ID": request_id, "X-House-ID": "house-7"},
    )
    assert resp.status_code == 200
    record = _find_log(server, request_id)
    assert record["house_id"] == "house-7" and record["source"] == "robustness"
    assert record["model"] == "tiny" and record["route"] == "/v1/chat/completions"
    assert record["status"] == 200 and record["method"] == "POST"
    assert record["prompt_tokens"] == resp.json()["usage"]["prompt_tokens"]
    assert record["completion_tokens"] == 5 and record["finish_reasons"] == ["length"]
    assert record["queue_ms"] >= 0 and record["ttft_ms"] > 0
    assert record["latency_ms"] >= record["ttft_ms"]
    assert "prompt" not in record and secret not in server.log_text()

    refused = client.post("/v1/chat/completions", json=chat_body(model="nope"),
                          headers={"X-Request-ID": f"{request_id}-404"})
    assert _find_log(server, f"{request_id}-404")["status"] == refused.status_code == 404


def test_start_up_logs_name_backend_blas_and_model_load_times(server: Server):
    log = server.log_text()
    assert "cpu backend" in log and "BLAS:" in log
    assert "models ready after" in log and "tiny loaded in" in log and "tiny-embed loaded" in log


def test_log_prompts_debug_flag_adds_the_prompt(caplog):
    app = create_app(Settings(log_prompts=True))
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        TestClient(app).post("/v1/chat/completions",
                             json=chat_body(model="nope", messages=[
                                 {"role": "user", "content": "debug me"}]))
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(records) == 1 and "debug me" in records[0]["prompt"]


def test_unknown_model_names_never_become_labels(server: Server, client: httpx.Client):
    before = len(client.get("/metrics").text)
    names = [f"made-up-{uuid.uuid4().hex}" for _ in range(40)]
    for name in names:
        assert client.post("/v1/embeddings", json={"model": name, "input": "x"}
                           ).status_code == 404
    text = client.get("/metrics").text
    assert not any(name in text for name in names)
    assert len(text) < before + 2000  # no series per name
    assert client.post("/v1/embeddings", json={"model": "tiny-embed", "input": "x"}
                       ).status_code == 200
    assert server.metric("mlx_server_embedding_requests_total", model_name="tiny-embed",
                         status="200") >= 1
