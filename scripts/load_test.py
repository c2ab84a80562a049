#!/usr/bin/env python3
"""Bounded load test with random client disconnects (loopback only).

Sends ``--requests`` chat completions at ``--concurrency``, half streamed; a
``--disconnect-rate`` share of them hang up at a random point. Every other response is
checked (status, JSON shape, SSE framing, finish reason, token count), and the run fails
(exit 1) on any error, lost or malformed response, or if the server's running/waiting
gauges do not return to 0 afterwards.

Warm-up: before the measured run, ``--warmup`` requests (default: one per concurrent client)
are sent at the same concurrency, none cut; RSS is read once the server is idle after them.
``--max-rss-growth 0.10`` also fails the run when the server's RSS after the run (idle, after
``--settle`` seconds) is more than 10% above that post-warm-up figure.

  python scripts/load_test.py --spawn                      # starts its own server
  python scripts/load_test.py --base-url http://127.0.0.1:8000 --server-pid 1234
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from bench_common import ManagedServer, percentile

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three colours.",
    "Say hello in Spanish.",
]


@dataclass
class Tally:
    ok: int = 0
    disconnected: int = 0
    errors: Counter = field(default_factory=Counter)  # status or error code -> count
    lost: list[str] = field(default_factory=list)  # no complete answer, not on purpose
    malformed: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0


def loopback_only(url: str) -> None:
    """Refuse any base URL that does not resolve to loopback addresses only."""
    host = urlparse(url).hostname or ""
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise SystemExit(f"refusing {url}: the load test only targets loopback addresses")


def check_completion(body: Any, max_tokens: int) -> str | None:
    """None when a non-streamed answer is well formed, else what is wrong."""
    try:
        choice = body["choices"][0]
        assert isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in {"stop", "length"}
        tokens = body["usage"]["completion_tokens"]
        assert tokens == max_tokens or (choice["finish_reason"] == "stop" and tokens <= max_tokens)
        assert body["htdi"]["requestId"]
    except (KeyError, IndexError, TypeError, AssertionError) as exc:
        return f"bad completion ({type(exc).__name__}): {json.dumps(body)[:200]}"
    return None


def check_stream(events: list[str], max_tokens: int) -> tuple[str | None, str | None]:
    """(error code, problem) for a complete SSE stream; both None when it is fine."""
    if not events or events[-1] != "[DONE]":
        return None, "stream did not end with [DONE]"
    try:
        chunks = [json.loads(e) for e in events[:-1]]
    except json.JSONDecodeError as exc:
        return None, f"non-JSON event: {exc}"
    if chunks and "error" in chunks[-1]:
        return str(chunks[-1]["error"].get("code")), None
    try:
        reasons = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
        assert reasons and reasons[-1] in {"stop", "length"}
        assert all(r is None for r in reasons[:-1])
        usage = chunks[-1]["usage"]
        assert usage["completion_tokens"] <= max_tokens and "htdi" in chunks[-1]
    except (KeyError, IndexError, TypeError, AssertionError) as exc:
        return None, f"bad stream ({type(exc).__name__}): {events[-3:]}"
    return None, None


async def one(client: httpx.AsyncClient, args: argparse.Namespace, rng: random.Random,
              tally: Tally) -> None:
    stream = rng.random() < 0.5
    cut = rng.random() < args.disconnect_rate
    body: dict[str, Any] = {
        "model": args.model, "max_tokens": args.max_tokens, "temperature": 0.7,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    try:
        if not stream:
            request = client.post("/v1/chat/completions", json=body)
            if cut:  # hang up before the answer, at a random moment
                try:
                    await asyncio.wait_for(request, timeout=rng.uniform(0.001, 0.5))
                except TimeoutError:
                    pass
                tally.disconnected += 1
                return
            resp = await request
            if resp.status_code != 200:
                tally.errors[str(resp.status_code)] += 1
                return
            problem = check_completion(resp.json(), args.max_tokens)
            if problem:
                tally.malformed.append(problem)
                return
            tally.tokens += resp.json()["usage"]["completion_tokens"]
        else:
            cut_after = rng.randint(0, args.max_tokens) if cut else None
            events: list[str] = []
            first_text = False
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    tally.errors[str(resp.status_code)] += 1
                    return
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    events.append(line[6:])
                    if not first_text and _has_text(line[6:]):  # not the role-only chunk
                        first_text = True
                        tally.ttfts.append(time.perf_counter() - started)
                    if cut_after is not None and len(events) > cut_after:
                        tally.disconnected += 1
                        return
            code, problem = check_stream(events, args.max_tokens)
            if code:
                tally.errors[code] += 1
                return
            if problem:
                tally.malformed.append(problem)
                return
            tally.tokens += json.loads(events[-2])["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        tally.lost.append(f"{type(exc).__name__}: {exc}")
        return
    tally.ok += 1
    tally.latencies.append(time.perf_counter() - started)


async def run(args: argparse.Namespace, base_url: str, requests: int | None = None,
              seed: int | None = None) -> tuple[Tally, float]:
    tally = Tally()
    rng = random.Random(args.seed if seed is None else seed)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests if requests is None else requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    async with httpx.AsyncClient(base_url=base_url, timeout=args.timeout, limits=limits,
                                 headers=headers, trust_env=False) as client:
        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                await one(client, args, rng, tally)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        return tally, time.perf_counter() - started


IDLE_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting",
               "mlx_server_http_requests_in_flight")


def scrape(base_url: str, headers: dict[str, str], names: tuple[str, ...]) -> dict[str, float]:
    """Sum of each named series over its labels."""
    text = httpx.get(base_url + "/metrics", headers=headers, timeout=10, trust_env=False).text
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def wait_idle(base_url: str, headers: dict[str, str], timeout: float = 60) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        now = scrape(base_url, headers, IDLE_GAUGES)
        if not any(now.values()) or time.monotonic() > deadline:
            return now
        time.sleep(0.25)


def rss_mb(pid: int | None) -> float | None:
    """The server process's resident memory (Linux /proc), or None when unknown."""
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root URL")
    p.add_argument("--spawn", action="store_true", help="start `python -m app serve` here")
    p.add_argument("--serve-args", default="", help="extra flags for the spawned server")
    p.add_argument("--server-pid", type=int, help="PID of the server, for RSS figures")
    p.add_argument("--model", default="default")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--disconnect-rate", type=float, default=0.1)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    p.add_argument("--api-key")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=None,
                   help="warm-up requests at the same concurrency, none cut, before the run "
                        "(default: --concurrency; 0: none)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds to wait once the server is idle before reading RSS")
    p.add_argument("--max-rss-growth", type=float, default=None,
                   help="fail when RSS after the run exceeds the post-warm-up RSS by more "
                        "than this fraction (e.g. 0.10)")
    p.add_argument("--json", type=Path, help="write the report here too")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server: ManagedServer | None = None
    base_url, pid = args.base_url.rstrip("/"), args.server_pid
    if args.spawn:
        server = ManagedServer.spawn_ours(args.serve_args, "load-test-", args.api_key)
        base_url, pid = server.root_url, server.proc.pid
    loopback_only(base_url)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        rss_start = rss_mb(pid)
        warmup = args.concurrency if args.warmup is None else args.warmup
        warm_tally = None
        if warmup > 0:
            warm_args = argparse.Namespace(**{**vars(args), "disconnect_rate": 0.0})
            warm_tally, _ = asyncio.run(run(warm_args, base_url, warmup, seed=args.seed + 1))
            wait_idle(base_url, headers)
            time.sleep(args.settle)
        rss_before = rss_mb(pid)
        tally, wall = asyncio.run(run(args, base_url))
        idle = wait_idle(base_url, headers)
        time.sleep(args.settle)  # the engine frees memory when it goes idle
        cache = scrape(base_url, headers, ("mlx_server_prefix_cache_bytes",))
        rss_after = rss_mb(pid)
        health = httpx.get(base_url + "/health", timeout=10, trust_env=False).status_code
    finally:
        if server is not None:
            server.stop()
    report = {
        "requests": args.requests, "concurrency": args.concurrency,
        "disconnect_rate": args.disconnect_rate, "max_tokens": args.max_tokens,
        "model": args.model, "wall_s": round(wall, 2),
        "ok": tally.ok, "disconnected_on_purpose": tally.disconnected,
        "errors": dict(tally.errors), "lost": len(tally.lost), "malformed": len(tally.malformed),
        "requests_per_s": round(tally.ok / wall, 2), "tokens_per_s": round(tally.tokens / wall, 1),
        "latency_p50_s": _round(percentile(tally.latencies, 50)),
        "latency_p99_s": _round(percentile(tally.latencies, 99)),
        "ttft_p50_s": _round(percentile(tally.ttfts, 50)),
        "ttft_p99_s": _round(percentile(tally.ttfts, 99)),
        "warmup_requests": warmup,
        "warmup_ok": warm_tally.ok if warm_tally else 0,
        "rss_start_mb": _round(rss_start, 1),
        "rss_before_mb": _round(rss_before, 1), "rss_after_mb": _round(rss_after, 1),
        "rss_growth": _round(rss_after / rss_before - 1 if rss_before and rss_after else None),
        "prefix_cache_mb": _round(cache["mlx_server_prefix_cache_bytes"] / 2**20, 1),
        "gauges_after": idle, "health_after": health,
        "examples": {"lost": tally.lost[:3], "malformed": tally.malformed[:3]},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = tally.errors or tally.lost or tally.malformed or any(idle.values()) or health != 200
    if warm_tally and (warm_tally.errors or warm_tally.lost or warm_tally.malformed):
        failed = True
    growth = report["rss_growth"]
    if args.max_rss_growth is not None and (growth is None or growth > args.max_rss_growth):
        print(f"RSS grew {growth} (limit {args.max_rss_growth})", file=sys.stderr)
        failed = True
    return 1 if failed else 0


def _has_text(event: str) -> bool:
    try:
        return bool(json.loads(event)["choices"][0]["delta"].get("content"))
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


if __name__ == "__main__":
    sys.exit(main())
