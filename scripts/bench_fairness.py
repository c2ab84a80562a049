"""Issue 23's hostile-network scenarios against a running server, one JSON line each.

- ``prefill``: a short chat's TTFT while a ~3,000-token prompt is being prefilled (item 7);
- ``flood``: a small chat's TTFT while two /v1/completions requests of 16 prompts × n=8
  (``max_tokens`` 2048, ``ignore_eos``) run (item 2);
- ``oversize``: time to the answer (and the server's RSS after it) of a 4 MB chat (item 3);
- ``embed``: a one-word embedding's latency behind a 128 × ~300-token request whose client
  leaves after ``--embed-big-timeout`` seconds (2), and the latency of the next request after
  that client left (item 6); with a long timeout, also the big request's own time.

    python scripts/bench_fairness.py --base-url http://127.0.0.1:8123 --pid PID prefill flood

Every request goes to the given (loopback) server only; each scenario is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx

from scripts.bench_common import build_prompt

CHAT = "/v1/chat/completions"


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


async def _ttft(client: httpx.AsyncClient, body: dict, timeout: float) -> float | None:
    """Seconds to the first content chunk of a streamed chat (None: none within timeout)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", CHAT, json={**body, "stream": True}) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    print(json.dumps({"status": resp.status_code, "body": resp.text[:200]}))
                    return None
                async for line in resp.aiter_lines():
                    if line.startswith("data: {"):
                        choices = json.loads(line[6:]).get("choices") or [{}]
                        if choices[0].get("delta", {}).get("content"):
                            return time.perf_counter() - started
    except TimeoutError:
        return None
    return None


def _short_chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 4, "temperature": 0}


async def _background(client: httpx.AsyncClient, path: str, body: dict,
                      statuses: list[int] | None = None) -> None:
    """A streamed request read until cancelled; its status goes into ``statuses``."""
    try:
        async with client.stream("POST", path, json={**body, "stream": True}) as resp:
            if statuses is not None:
                statuses.append(resp.status_code)
            async for _ in resp.aiter_lines():
                pass
    except (httpx.HTTPError, asyncio.CancelledError):
        pass


async def prefill(client: httpx.AsyncClient, args: argparse.Namespace) -> dict:
    long_prompt = build_prompt("free", 3000, 8, tag=str(time.time()))
    body = {"model": args.model, "messages": [{"role": "user", "content": long_prompt}],
            "max_tokens": 8, "temperature": 0}
    task = asyncio.create_task(_background(client, CHAT, body))
    await asyncio.sleep(1.0)  # the long prompt is in its prefill
    ttft = await _ttft(client, _short_chat(args.model), args.timeout)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return {"scenario": "prefill", "short_ttft_s": ttft}


async def flood(client: httpx.AsyncClient, args: argparse.Namespace) -> dict:
    prompts = [f"Story {i}: once upon a time" for i in range(args.flood_prompts)]
    big = {"model": args.model, "prompt": prompts, "n": 8, "max_tokens": 2048,
           "ignore_eos": True, "temperature": 1.0}
    statuses: list[int] = []
    tasks = [asyncio.create_task(_background(client, "/v1/completions", big, statuses))
             for _ in range(2)]
    await asyncio.sleep(3.0)
    ttft = await _ttft(client, _short_chat(args.model), args.timeout)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"scenario": "flood", "prompts": args.flood_prompts, "big_statuses": statuses,
            "short_ttft_s": ttft}


async def oversize(client: httpx.AsyncClient, args: argparse.Namespace) -> dict:
    text = "lorem ipsum " * (4 * 1024 * 1024 // 12 - 64)
    body = {"model": args.model, "messages": [{"role": "user", "content": text}],
            "max_tokens": 4}
    before = _rss_mb(args.pid)
    started = time.perf_counter()
    resp = await client.post(CHAT, json=body, timeout=args.timeout)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(1.0)
    return {"scenario": "oversize", "status": resp.status_code, "seconds": round(elapsed, 2),
            "rss_before_mb": before, "rss_after_mb": _rss_mb(args.pid)}


async def embed(client: httpx.AsyncClient, args: argparse.Namespace) -> dict:
    big = {"model": args.embedding_model,
           "input": [build_prompt("free", 300, 8, tag=str(i)) for i in range(128)]}
    started = time.perf_counter()
    task = asyncio.create_task(client.post("/v1/embeddings", json=big,
                                           timeout=args.embed_big_timeout))
    await asyncio.sleep(0.5)
    sent = time.perf_counter()
    resp = await client.post("/v1/embeddings", json={"model": args.embedding_model,
                                                     "input": "hello"}, timeout=args.timeout)
    small = time.perf_counter() - sent
    big_result = (await asyncio.gather(task, return_exceptions=True))[0]
    big_outcome = (big_result.status_code if isinstance(big_result, httpx.Response)
                   else type(big_result).__name__)
    big_s = time.perf_counter() - started
    # the big request's client left at 2 s: how soon can the next request be served?
    await asyncio.sleep(max(0.0, 2.5 - (time.perf_counter() - started)))
    after = time.perf_counter()
    await client.post("/v1/embeddings", json={"model": args.embedding_model, "input": "hi"},
                      timeout=args.timeout)
    return {"scenario": "embed", "big": big_outcome, "small_status": resp.status_code,
            "small_latency_s": round(small, 2), "big_s": round(big_s, 2),
            "next_after_disconnect_s": round(time.perf_counter() - after, 2)}


SCENARIOS = {"prefill": prefill, "flood": flood, "oversize": oversize, "embed": embed}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="+", choices=sorted(SCENARIOS))
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", default="default")
    parser.add_argument("--embedding-model", default="default-embedding")
    parser.add_argument("--pid", type=int, default=None, help="server pid, for RSS")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--embed-big-timeout", type=float, default=2.0,
                        help="seconds before the big embedding request's client leaves")
    parser.add_argument("--flood-prompts", type=int, default=16, help="prompts per big request")
    args = parser.parse_args()
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=args.base_url, timeout=args.timeout,
                                 limits=limits) as client:
        for name in args.scenarios:
            result = await SCENARIOS[name](client, args)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
