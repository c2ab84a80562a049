"""Engine faults (TEST-ONLY hook, app/core/faults.py) fail one request; the rest go on."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from tests.robustness.conftest import (
    FAULT_AFTER_TOKENS,
    Server,
    assert_envelope,
    assert_still_serving,
    chat_body,
    sse_lines,
)

CHAT = "/v1/chat/completions"


async def _stream(client: httpx.AsyncClient, request_id: str, max_tokens: int) -> list[str]:
    body = chat_body(max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", CHAT, json=body,
                             headers={"X-Request-ID": request_id}) as resp:
        assert resp.status_code == 200
        return sse_lines((await resp.aread()).decode())


async def _mixed(base_url: str) -> tuple[list[str], list[list[str]]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        faulty = _stream(client, f"fault-injection-{uuid.uuid4().hex}", 40)
        normal = [_stream(client, f"normal-{i}", 40) for i in range(4)]
        results = await asyncio.gather(faulty, *normal)
    return results[0], list(results[1:])


def test_faulty_stream_ends_with_error_event_then_done_others_unaffected(server: Server):
    errors_before = server.metric("vllm:request_success_total", finished_reason="error")
    faulty, normals = asyncio.run(_mixed(server.base_url))

    assert faulty[-1] == "[DONE]"
    error = json.loads(faulty[-2])["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "injected fault" in error["message"]
    chunks = [json.loads(line) for line in faulty[:-2]]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks if c["choices"])
    assert not any("error" in c for c in chunks)

    for lines in normals:
        assert lines[-1] == "[DONE]"
        events = [json.loads(line) for line in lines[:-1]]
        assert not any("error" in e for e in events)
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        assert events[-1]["usage"]["completion_tokens"] == 40

    assert server.metric("vllm:request_success_total", finished_reason="error") == (
        errors_before + 1
    )
    assert_still_serving(server.base_url)


def test_faulty_non_streaming_request_gets_500_envelope(server: Server, client: httpx.Client):
    resp = client.post(CHAT, json=chat_body(max_tokens=20),
                       headers={"X-Request-ID": f"fault-injection-{uuid.uuid4().hex}"})
    error = assert_envelope(resp, 500, "internal_error")
    assert "injected fault" in error["message"] and "Traceback" not in error["message"]
    assert_still_serving(server.base_url)


def test_out_of_memory_in_engine_fails_only_that_request(server: Server, client: httpx.Client):
    resp = client.post(CHAT, json=chat_body(max_tokens=20),
                       headers={"X-Request-ID": f"fault-injection-oom-{uuid.uuid4().hex}"})
    error = assert_envelope(resp, 500, "internal_error")
    assert "MemoryError" in error["message"]
    assert_still_serving(server.base_url)


def test_fault_only_after_k_tokens_and_only_when_opted_in(server: Server, client: httpx.Client):
    """k tokens are fine for a fault-injection request; ordinary ids never fault."""
    short = client.post(CHAT, json=chat_body(max_tokens=FAULT_AFTER_TOKENS),
                        headers={"X-Request-ID": f"fault-injection-{uuid.uuid4().hex}"})
    assert short.status_code == 200, short.text
    assert short.json()["usage"]["completion_tokens"] == FAULT_AFTER_TOKENS
    plain = client.post(CHAT, json=chat_body(max_tokens=30),
                        headers={"X-Request-ID": f"injection-{uuid.uuid4().hex}"})
    assert plain.status_code == 200, plain.text
