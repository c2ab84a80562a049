"""Clients that hang up: streams cut at random points, queued requests abandoned.

Afterwards the engine's running/waiting gauges and the in-flight gauge return to 0, the
cut sequences are counted as aborted, and memory returns to its baseline: the RSS after a
warm-up round (allocator pools, the prefix cache filled to its small bound) is where
the next identical rounds leave it, so cut requests leak nothing.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx

from tests.robustness.conftest import Server, assert_still_serving, chat_body

CHAT = "/v1/chat/completions"
STREAMS = 50
ABANDONED = 20
MAX_TOKENS = 200
RSS_TOLERANCE = 16 * 1024 * 1024


async def _cut_stream(client: httpx.AsyncClient, cut_after: int) -> int:
    """Read ``cut_after`` SSE events, then hang up; returns the events read."""
    seen = 0
    body = chat_body(max_tokens=MAX_TOKENS, stream=True)  # greedy: never an early stop
    async with client.stream("POST", CHAT, json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if seen >= cut_after:
                break
            if line.startswith("data: "):
                assert line != "data: [DONE]", "a cut stream ran to completion"
                seen += 1
    return seen


async def _abandon(client: httpx.AsyncClient, stream: bool) -> None:
    """Send a request and give up on it while it is still queued."""
    body = chat_body(max_tokens=MAX_TOKENS, stream=stream)
    try:
        await asyncio.wait_for(client.post(CHAT, json=body), timeout=0.05)
    except TimeoutError:
        return
    raise AssertionError("an abandoned request finished before its client gave up")


async def _round(base_url: str, seed: int) -> list[int]:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=STREAMS + ABANDONED + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        streams = [_cut_stream(client, rng.randint(0, 20)) for _ in range(STREAMS)]
        abandoned = [_abandon(client, stream=i % 2 == 0) for i in range(ABANDONED)]
        results = await asyncio.gather(*streams, *abandoned)
    return [r for r in results if isinstance(r, int)]


def _wait_idle(server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        running = server.metric("vllm:num_requests_running", model_name="tiny")
        waiting = server.metric("vllm:num_requests_waiting", model_name="tiny")
        in_flight = server.metric("mlx_server_http_requests_in_flight")
        if running == waiting == in_flight == 0:
            return
        assert time.monotonic() < deadline, (running, waiting, in_flight)
        time.sleep(0.2)


def test_cut_streams_and_abandoned_requests_leave_nothing_behind(server: Server):
    assert_still_serving(server.base_url)  # the model is loaded and warm
    asyncio.run(_round(server.base_url, seed=0))  # warm-up: steady-state memory
    _wait_idle(server)
    baseline = server.rss_bytes()

    for seed in (1, 2):
        aborts_before = server.metric("vllm:request_success_total", finished_reason="abort")
        cut_points = asyncio.run(_round(server.base_url, seed=seed))
        _wait_idle(server)
        aborted = server.metric("vllm:request_success_total", finished_reason="abort")
        assert aborted - aborts_before >= sum(1 for c in cut_points if c >= 2)

    growth = server.rss_bytes() - baseline
    assert growth < RSS_TOLERANCE, f"RSS grew by {growth / 2**20:.1f} MiB over its baseline"
    assert_still_serving(server.base_url)
