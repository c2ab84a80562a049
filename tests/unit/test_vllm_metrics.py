"""vLLM-named series dashboards expect, and one inter-token latency per generated token."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.engine.lm.iteration_stats import TokenHistogram


def test_token_histogram_buckets():
    hist = TokenHistogram()
    for value in (1, 3, 8, 9, 20000):
        hist.observe(value)
    buckets = dict(hist.cumulative())
    assert buckets["1"] == 1 and buckets["8"] == 3 and buckets["16"] == 4
    assert buckets["16384"] == 4 and buckets["+Inf"] == 5 and hist.total == 20021


def _scrape(client: TestClient) -> dict[str, float]:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("vllm:") and ('model_name="tiny"' in line or "cache_config" in line):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _get(scrape: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in scrape.items() if re.fullmatch(re.escape(prefix) + r"\{.*", k)
               and "le=" not in k)


def test_vllm_series_move_with_a_request(client: TestClient):
    before = _scrape(client)
    body = {"model": "default", "prompt": "Numbers: 0 1 2 3 4 5", "max_tokens": 5, "n": 2,
            "temperature": 0}
    usage = client.post("/v1/completions", json=body).json()["usage"]
    after = _scrape(client)

    def delta(name: str) -> float:
        return _get(after, name) - _get(before, name)

    assert delta("vllm:request_params_n_count") == 1 and delta("vllm:request_params_n_sum") == 2
    assert delta("vllm:request_prompt_tokens_count") == 2
    assert delta("vllm:request_prompt_tokens_sum") == 2 * usage["prompt_tokens"]  # per choice
    assert delta("vllm:request_generation_tokens_sum") == usage["completion_tokens"] == 10
    assert delta("vllm:request_params_max_tokens_sum") == 10
    for phase in ("prefill", "decode", "inference"):
        assert delta(f"vllm:request_{phase}_time_seconds_count") == 2
    assert delta("vllm:inter_token_latency_seconds_count") == 10 - 2  # all but firsts
    assert delta("vllm:iteration_tokens_total_count") >= 5
    assert delta("vllm:iteration_tokens_total_sum") >= 10
    assert _get(after, "vllm:num_preemptions_total") == 0
    assert 0 <= _get(after, "vllm:kv_cache_usage_perc") <= 1
    (info,) = [k for k in after if k.startswith("vllm:cache_config_info")]
    assert 'enable_prefix_caching="' in info and after[info] == 1
