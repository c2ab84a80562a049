"""Issue 23 item 6: the embedding queue is bounded (429 + Retry-After), never unbounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.robustness.conftest import assert_envelope, assert_still_serving, start_server


async def _burst(base_url: str, count: int) -> list[httpx.Response]:
    body = {"model": "tiny-embed", "input": [f"sentence number {i} about dogs" for i in range(8)]}
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post("/v1/embeddings", json=body)
                                      for _ in range(count)))


def test_embedding_queue_bound_gives_429(models_file: Path,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    server = start_server(tmp_path_factory.mktemp("embed-queue"), models_file,
                          "--embedding-queue-depth", "2", "--embedding-batch-size", "1")
    try:
        responses = asyncio.run(_burst(server.base_url, 24))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 429}, statuses
        refused = next(r for r in responses if r.status_code == 429)
        assert_envelope(refused, 429, code="queue_full")
        assert refused.headers["retry-after"] == "1"
        assert_still_serving(server.base_url)
    finally:
        assert server.stop() == 0
