"""Speculative decoding through the API: per-request opt-out and the acceptance counters."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

SPEC_METRICS = (
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
    "vllm:spec_decode_num_emitted_tokens",
)


def spec_counters(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model_name") != "tiny":
                continue
            name = sample.name.removesuffix("_total")
            if name in SPEC_METRICS or name == "vllm:spec_decode_draft_acceptance_rate":
                values[name] = sample.value
    return values


def ask(client: TestClient, **extra) -> str:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "one two three one two three one two three"}],
        "max_tokens": 24,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 24
    return response.json()["choices"][0]["message"]["content"]


def test_a_lone_greedy_request_is_counted_and_opting_out_gives_the_same_text(client):
    before = spec_counters(client)
    assert set(SPEC_METRICS) <= set(before)
    speculated = ask(client)
    during = spec_counters(client)
    assert during["vllm:spec_decode_num_drafts"] > before["vllm:spec_decode_num_drafts"]
    emitted = (during["vllm:spec_decode_num_emitted_tokens"]
               - before["vllm:spec_decode_num_emitted_tokens"])
    assert 0 < emitted <= 24
    drafted = during["vllm:spec_decode_num_draft_tokens"]
    accepted = during["vllm:spec_decode_num_accepted_tokens"]
    assert accepted <= drafted
    if drafted:
        assert abs(during["vllm:spec_decode_draft_acceptance_rate"] - accepted / drafted) < 1e-9

    plain = ask(client, speculative=False)
    after = spec_counters(client)
    assert after == during  # the opted-out request never entered the speculative path
    assert plain == speculated  # greedy: the same text either way


def test_speculative_must_be_a_boolean(client):
    response = client.post("/v1/completions", json={
        "model": "tiny", "prompt": "hi", "max_tokens": 2, "speculative": "maybe"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "speculative"
