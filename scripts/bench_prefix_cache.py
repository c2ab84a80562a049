#!/usr/bin/env python3
"""Second-turn TTFT with and without the prefix cache (loopback only).

Each conversation: turn 1 = a long user message (``--prompt-tokens``, a per-conversation tag
in front so conversations do not share a prefix), streamed, greedy, ``--max-tokens``; turn 2 =
turn 1 + the assistant's answer + a short follow-up question. ``--concurrency`` conversations
run at a time. Reported per turn: TTFT (to the first streamed text) p50/p90, prompt tokens and
``usage.prompt_tokens_details.cached_tokens``; and the server's RSS after a warm-up
conversation and after the run (idle).

  python scripts/bench_prefix_cache.py --spawn --serve-args "--prefix-cache-bytes 268435456"
  python scripts/bench_prefix_cache.py --spawn        # prefix cache off (the default)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from bench_common import ManagedServer, build_prompt, percentile
from load_test import loopback_only, rss_mb, wait_idle


async def turn(client: httpx.AsyncClient, model: str, messages: list[dict], max_tokens: int,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One streamed greedy chat turn: TTFT, text, prompt and cached tokens; ``extra``: more
    body fields (e.g. ``cache_salt``)."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, **(extra or {})}
    started = time.perf_counter()
    ttft, text, usage = None, "", {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            for choice in chunk.get("choices") or []:
                piece = choice["delta"].get("content") or ""
                if piece and ttft is None:
                    ttft = time.perf_counter() - started
                text += piece
            usage = chunk.get("usage") or usage
    details = usage.get("prompt_tokens_details") or {}
    return {"ttft": ttft, "text": text, "prompt_tokens": usage.get("prompt_tokens"),
            "cached_tokens": details.get("cached_tokens") or 0}


async def conversation(client: httpx.AsyncClient, args: argparse.Namespace, i: int
                       ) -> tuple[dict, dict]:
    prompt = build_prompt("essay", args.prompt_tokens, args.max_tokens, tag=f"conv {i}")
    messages = [{"role": "user", "content": prompt}]
    first = await turn(client, args.model, messages, args.max_tokens)
    messages += [{"role": "assistant", "content": first["text"]},
                 {"role": "user", "content": "Now summarise what you wrote in one sentence."}]
    second = await turn(client, args.model, messages, args.max_tokens)
    return first, second


async def run(args: argparse.Namespace, base_url: str, n: int, offset: int) -> list:
    sem = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=args.timeout, trust_env=False) as c:
        async def one(i: int) -> tuple[dict, dict]:
            async with sem:
                return await conversation(c, args, offset + i)

        return await asyncio.gather(*(one(i) for i in range(n)))


def summary(turns: list[dict]) -> dict[str, Any]:
    ttfts = [t["ttft"] for t in turns if t["ttft"] is not None]
    return {
        "ttft_p50_ms": round(1000 * percentile(ttfts, 50), 1) if ttfts else None,
        "ttft_p90_ms": round(1000 * percentile(ttfts, 90), 1) if ttfts else None,
        "prompt_tokens_mean": round(sum(t["prompt_tokens"] or 0 for t in turns) / len(turns), 1),
        "cached_tokens_mean": round(sum(t["cached_tokens"] for t in turns) / len(turns), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--spawn", action="store_true", help="start `python -m app serve` here")
    p.add_argument("--serve-args", default="")
    p.add_argument("--server-pid", type=int)
    p.add_argument("--model", default="default")
    p.add_argument("--conversations", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    server, base_url, pid = None, args.base_url.rstrip("/"), args.server_pid
    if args.spawn:
        server = ManagedServer.spawn_ours(args.serve_args, "bench-prefix-")
        base_url, pid = server.root_url, server.proc.pid
    loopback_only(base_url)
    try:
        asyncio.run(run(args, base_url, 1, 10_000))  # warm-up conversation
        wait_idle(base_url, {})
        time.sleep(1)
        rss_warm = rss_mb(pid)
        started = time.perf_counter()
        results = asyncio.run(run(args, base_url, args.conversations, 0))
        wall = time.perf_counter() - started
        wait_idle(base_url, {})
        time.sleep(2)
        rss_after = rss_mb(pid)
        cache = httpx.get(base_url + "/metrics", timeout=10, trust_env=False).text
    finally:
        if server is not None:
            server.stop()
    cache_mb = None
    for line in cache.splitlines():
        if line.startswith("mlx_server_prefix_cache_bytes"):
            cache_mb = round(float(line.rsplit(" ", 1)[1]) / 2**20, 1)
    report = {
        "serve_args": args.serve_args, "conversations": args.conversations,
        "concurrency": args.concurrency, "prompt_tokens": args.prompt_tokens,
        "max_tokens": args.max_tokens, "wall_s": round(wall, 1),
        "turn1": summary([r[0] for r in results]), "turn2": summary([r[1] for r in results]),
        "rss_after_warmup_mb": rss_warm and round(rss_warm, 1),
        "rss_after_mb": rss_after and round(rss_after, 1),
        "prefix_cache_mb": cache_mb,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
