#!/usr/bin/env python3
"""Agent sessions against OpenAI-compatible servers: a shared system prompt, growing history.

``--sessions`` simulated agent sessions (default 4) run at once against one server. Every
session sends the same ~``--system-tokens`` system prompt (instructions and a tool list,
as text: the default model's chat template has no tool slot) and ``--turns`` user turns
whose history grows: each turn re-sends the whole conversation so far, as agent clients
do. Streamed, greedy, ``--max-tokens`` per answer. Reported per server: TTFT per turn
(median over sessions), the median TTFT of turns 2..N, total wall time, prompt and cached
tokens, RSS after the run; with two targets, ours/baseline ratios.

Targets run one after the other in the same invocation (never at once: they would share
the CPU). Compare with mlx_lm.server (same float32 weights, same OpenBLAS, its prompt cache
on), both started here on free loopback ports:

  python scripts/bench_agent.py --spawn --mlx-dir /tmp/smol-f32 --json agent.json
Or against running servers:
  python scripts/bench_agent.py --url http://127.0.0.1:8001 --model default \
      --baseline-url http://127.0.0.1:8002 --baseline-model default_model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from bench_common import ManagedServer, free_port
from bench_prefix_cache import turn

THEIRS_CMD = (
    "{python} scripts/run_with_blas.py mlx_lm.server --model {mlx_dir} "
    "--host 127.0.0.1 --port {port} --prompt-cache-size 64 --prompt-cache-bytes {cache_bytes}"
)
TASKS = [
    "Read src/billing/invoice.py and tell me which function computes the tax.",
    "Rename the helper that rounds amounts so that its name says what it rounds.",
    "Write a unit test for the discount rule when a customer has two coupons.",
    "The nightly job failed with a timeout. Which step should we look at first?",
    "Summarise the changes you made so far in three short bullet points.",
    "Check whether the configuration loader still reads the old environment names.",
    "Explain why the cache is cleared twice during start-up and whether it matters.",
]
TOOL_VERBS = ["read", "write", "search", "list", "run", "open", "diff", "fetch", "lint", "test"]
TOOL_NOUNS = ["file", "directory", "symbol", "commit", "branch", "issue", "log", "package",
              "config", "snippet", "schema", "endpoint"]
INSTRUCTIONS = (
    "You are a careful coding agent working in a large repository. Think about what the user "
    "asks, decide which tool helps, call it with exact arguments, and read its result before "
    "you answer. Prefer small, reviewable changes. Never invent file contents; read them "
    "first. When a command fails, report the error and what you will try next. Keep answers "
    "short and concrete, and say which files you touched. "
)


def system_prompt(tokens: int) -> str:
    """~``tokens`` tokens (~4 characters each) of agent instructions and tool descriptions."""
    parts = [INSTRUCTIONS, "\n\nTools you can call:\n"]
    size, i = sum(len(p) for p in parts), 0
    while size < tokens * 4:
        verb, noun = TOOL_VERBS[i % len(TOOL_VERBS)], TOOL_NOUNS[(i * 7) % len(TOOL_NOUNS)]
        tool = {
            "name": f"{verb}_{noun}_{i}",
            "description": f"{verb.capitalize()} a {noun} of the workspace and return the "
                           f"result as text; use it when the task needs the {noun} itself.",
            "parameters": {"type": "object", "properties": {
                "path": {"type": "string", "description": f"where the {noun} is"},
                "limit": {"type": "integer", "description": "at most this many lines"}},
                "required": ["path"]},
        }
        line = json.dumps(tool) + "\n"
        parts.append(line)
        size += len(line)
        i += 1
    return "".join(parts)


async def session(client: httpx.AsyncClient, model: str, args: argparse.Namespace,
                  system: str, index: int) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": system}]
    turns = []
    for t in range(args.turns):
        task = TASKS[(index + t) % len(TASKS)]
        messages.append({"role": "user", "content": f"(session {index}, step {t + 1}) {task}"})
        started = time.perf_counter()
        result = await turn(client, model, messages, args.max_tokens)
        result["e2e"] = time.perf_counter() - started
        result["turn"] = t + 1
        messages.append({"role": "assistant", "content": result.pop("text")})
        turns.append(result)
    return turns


async def run_target(name: str, root: str, model: str, args: argparse.Namespace,
                     headers: dict[str, str]) -> dict[str, Any]:
    system = system_prompt(args.system_tokens)
    async with httpx.AsyncClient(base_url=root, timeout=args.timeout, headers=headers,
                                 trust_env=False) as client:
        started = time.perf_counter()
        sessions = await asyncio.gather(
            *[session(client, model, args, system, i) for i in range(args.sessions)])
        total = time.perf_counter() - started
    per_turn = []
    for t in range(args.turns):
        rows = [s[t] for s in sessions]
        per_turn.append({
            "turn": t + 1,
            "ttft_s_median": statistics.median(r["ttft"] for r in rows),
            "prompt_tokens_mean": statistics.mean(r["prompt_tokens"] or 0 for r in rows),
            "cached_tokens_mean": statistics.mean(r["cached_tokens"] for r in rows),
        })
    later = [s[t]["ttft"] for s in sessions for t in range(1, args.turns)]
    return {
        "name": name, "model": model, "total_s": total, "turns": per_turn,
        "ttft_s_median_turn1": per_turn[0]["ttft_s_median"],
        "ttft_s_median_later": statistics.median(later) if later else None,
        "sessions": sessions,
    }


def spawn(args: argparse.Namespace, which: str) -> ManagedServer:
    log_dir = Path(tempfile.mkdtemp(prefix=f"bench-agent-{which}-"))
    if which == "ours":
        return ManagedServer.spawn_ours(args.serve_args, "bench-agent-ours-",
                                        timeout=args.startup_timeout)
    port = free_port()
    cmd = THEIRS_CMD.format(python=shlex.quote(sys.executable), mlx_dir=args.mlx_dir,
                            port=port, cache_bytes=args.baseline_cache_bytes)
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.baseline_threads)  # its faster count
    server = ManagedServer("baseline", cmd, port, log_dir / "server.log")
    server.start()
    server.wait_ready(args.startup_timeout)
    return server


def print_report(results: list[dict[str, Any]]) -> None:
    for r in results:
        print(f"\n== {r['name']} ({r['model']}): total {r['total_s']:.1f} s, "
              f"RSS {r.get('rss_mb') or '-'} MB")
        print(f"{'turn':>5}{'TTFT med s':>12}{'prompt tok':>12}{'cached tok':>12}")
        for t in r["turns"]:
            print(f"{t['turn']:>5}{t['ttft_s_median']:>12.2f}{t['prompt_tokens_mean']:>12.0f}"
                  f"{t['cached_tokens_mean']:>12.0f}")
    if len(results) == 2:
        ours, base = results
        print("\nours / baseline:")
        for label, key in (("TTFT turn 1 (median)", "ttft_s_median_turn1"),
                           ("TTFT turns 2..N (median)", "ttft_s_median_later"),
                           ("total time", "total_s")):
            if ours[key] and base[key]:
                print(f"  {label:<26}{ours[key]:>8.2f} s {base[key]:>8.2f} s "
                      f"{ours[key] / base[key]:>7.3f}x")


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    targets = [("ours", args.url, args.model), ("baseline", args.baseline_url,
                                                args.baseline_model or args.mlx_dir)]
    results = []
    for name, url, model in targets:
        if not args.spawn and url is None:
            continue
        server = spawn(args, name) if args.spawn else None
        try:
            root = server.root_url if server else url.rstrip("/").removesuffix("/v1")
            headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
            result = await run_target(name, root, model, args, headers)
            if server is not None:
                result["rss_mb"] = server.memory().get("rss_mb")
            results.append(result)
        finally:
            if server is not None:
                server.stop()
        if args.spawn:
            await asyncio.sleep(args.settle_s)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default=None, help="our server's root URL")
    p.add_argument("--model", default="default")
    p.add_argument("--baseline-url", default=None)
    p.add_argument("--baseline-model", default=None, help="default: --mlx-dir")
    p.add_argument("--api-key", default=None)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--system-tokens", type=int, default=3000)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--json", dest="json_out", default=None)
    s = p.add_argument_group("spawn mode: start ours, then mlx_lm.server, on free ports")
    s.add_argument("--spawn", action="store_true")
    s.add_argument("--serve-args", default="", help="extra flags for python -m app serve")
    s.add_argument("--mlx-dir", default=None, help="mlx-lm model directory (float32 weights)")
    s.add_argument("--baseline-threads", type=int, default=2, help="its OPENBLAS_NUM_THREADS")
    s.add_argument("--baseline-cache-bytes", type=int, default=4 << 30)
    s.add_argument("--startup-timeout", type=float, default=600.0)
    s.add_argument("--settle-s", type=float, default=5.0)
    args = p.parse_args(argv)
    if args.spawn and not args.mlx_dir:
        p.error("--spawn needs --mlx-dir")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    out = asyncio.run(main(arguments))
    print_report(out)
    if arguments.json_out:
        Path(arguments.json_out).write_text(json.dumps(
            {"args": {k: v for k, v in vars(arguments).items()}, "results": out}, indent=1,
            default=str))
