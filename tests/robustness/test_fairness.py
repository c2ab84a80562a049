"""Issue 23 items 2, 3 and 7: one request or one long prompt must not hold everyone up.

A server of its own on a random llama large enough that a 3,000-token prompt takes many
seconds to prefill on two CPU cores (``--prefill-step-size 4096``: without prefill chunking by
time, the whole prompt is one call), batch 8 (so one request may hold 4 slots and one stays
free for newcomers).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from tests.robustness.conftest import Server, assert_envelope, start_server

CHAT = "/v1/chat/completions"
SHORT_TTFT_LIMIT_S = 6.0  # the benchmark's figure is ~1 s; the machine is shared and noisy


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.unit.tiny_llama import build_tiny_llama

    root = tmp_path_factory.mktemp("fairness")
    llama = build_tiny_llama(root / "slow-llama", context_length=4096, hidden_size=768,
                             layers=8)
    registry = {"models": [
        {"id": "slow", "type": "lm", "source": str(llama), "family": "llama",
         "context_length": 4096, "limits": {"max_tokens": 2048}, "preload": True},
    ]}
    models = root / "models.yaml"
    models.write_text(yaml.safe_dump(registry))
    server = start_server(root, models, "--max-batch-size", "8", "--prefill-step-size", "4096",
                          "--max-sequences-per-request", "16", "--max-n", "4")
    try:
        yield server
    finally:
        server.stop()


async def _first_token_s(client: httpx.AsyncClient, body: dict) -> float:
    """Seconds from sending a streamed chat to its first content token."""
    started = time.perf_counter()
    async with client.stream("POST", CHAT, json={**body, "stream": True}) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    return time.perf_counter() - started
    raise AssertionError("the short chat produced no content")


async def _drain(client: httpx.AsyncClient, path: str, body: dict, started: asyncio.Event):
    async with client.stream("POST", path, json={**body, "stream": True}) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if line.startswith("data: {") and ('"text"' in line or '"content"' in line):
                started.set()


SHORT = {"model": "slow", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
         "temperature": 0}


async def _short_ttft_behind(server: Server, path: str, bodies: list[dict]) -> float:
    """The short chat's TTFT while ``bodies`` stream (each has produced text first)."""
    limits = httpx.Limits(max_connections=len(bodies) + 2)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120, limits=limits) as client:
        events = [asyncio.Event() for _ in bodies]
        tasks = [asyncio.create_task(_drain(client, path, body, event))
                 for body, event in zip(bodies, events, strict=True)]
        try:
            if path == CHAT:  # a long prompt: send the short one during its prefill
                await asyncio.sleep(1.5)
            else:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 120)
            return await asyncio.wait_for(_first_token_s(client, SHORT), 60)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:  # the background requests were served, not refused
                if not isinstance(result, asyncio.CancelledError | None):
                    raise result


def test_short_chat_is_not_behind_a_long_prefill(slow_server: Server) -> None:
    """Item 7: a ~3,000-token prompt is prefilled in time-bounded chunks, so a short chat
    sent during its prefill gets its first token within seconds, not after the whole prompt."""
    words = " ".join(f"w{i % 97}" for i in range(770))  # ~3,000 tokens with this tokenizer
    long_body = {"model": "slow", "messages": [{"role": "user", "content": words}],
                 "max_tokens": 4, "temperature": 0}
    assert asyncio.run(_short_ttft_behind(slow_server, CHAT, [long_body])) < SHORT_TTFT_LIMIT_S


def test_big_requests_do_not_starve_a_small_chat(slow_server: Server) -> None:
    """Item 2: two requests of 4 prompts × n=4 with ignore_eos fill the batch; a newcomer's
    single sequence still starts at once (fair admission, a reserved slot)."""
    big = {"model": "slow", "prompt": [f"Story {i}:" for i in range(4)], "n": 4,
           "max_tokens": 2000, "ignore_eos": True, "temperature": 1.0}
    ttft = asyncio.run(_short_ttft_behind(slow_server, "/v1/completions", [big, big]))
    assert ttft < SHORT_TTFT_LIMIT_S


def test_sequences_per_request_are_bounded_before_tokenizing(slow_server: Server) -> None:
    """Item 2/3: prompts × n over the bound is a 400 at once, however long the list."""
    with httpx.Client(base_url=slow_server.base_url, timeout=60) as client:
        started = time.perf_counter()
        resp = client.post("/v1/completions", json={
            "model": "slow", "prompt": ["a b c d e f g h"] * 200_000, "max_tokens": 1})
        elapsed = time.perf_counter() - started
        assert_envelope(resp, 400, param="prompt")
        assert "sequences" in resp.json()["error"]["message"]
        resp = client.post("/v1/completions", json={
            "model": "slow", "prompt": ["x"] * 5, "n": 4, "max_tokens": 1})
        assert_envelope(resp, 400)
    assert elapsed < 10.0  # tokenizing the list first took ~17 s for 900k entries


def _rss(server: Server) -> int:
    return server.rss_bytes()


def test_oversized_text_is_refused_before_tokenizing(slow_server: Server) -> None:
    """Item 3: a 3.5 MB chat is a 400 by its character count: fast, and memory stays put."""
    text = "lorem ipsum " * (3_500_000 // 12)
    with httpx.Client(base_url=slow_server.base_url, timeout=120) as client:
        before = _rss(slow_server)
        started = time.perf_counter()
        resp = client.post(CHAT, json={"model": "slow", "max_tokens": 1,
                                       "messages": [{"role": "user", "content": text}]})
        elapsed = time.perf_counter() - started
        error = assert_envelope(resp, 400, code="context_length_exceeded")
        assert "characters" in error["message"]
        resp = client.post("/tokenize", json={"model": "slow", "prompt": text})
        assert_envelope(resp, 400, code="context_length_exceeded")
        grown = _rss(slow_server) - before
    assert elapsed < 5.0, elapsed
    assert grown < 300 * 1024 * 1024, grown

