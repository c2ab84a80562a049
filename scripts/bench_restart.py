#!/usr/bin/env python3
"""A session's next turn after a server restart: served from the prefix cache's disk tier?

Starts ``python -m app serve`` (extra flags: ``--serve-args``), sends turn 1 of an agent
session (a ~``--system-tokens`` system prompt + tools as text, one user message) cold, stops
the server with SIGTERM (its RAM entries go to the disk tier), starts it again and sends
turn 2 (the whole history + a new user message). A control request with the same turn-2
messages under another ``cache_salt`` (its own, empty namespace) gives the cold prefill
after the restart. Reported: TTFTs, cached tokens, and turn 2's TTFT over the control's
(issue 21's goal: <= 0.2). Each run uses fresh random salts, so files from earlier runs
never help. Streamed, greedy, ``--max-tokens`` per answer.

  python scripts/bench_restart.py --system-tokens 3000 --json restart.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any

import httpx
from bench_agent import TASKS, system_prompt
from bench_common import ManagedServer
from bench_prefix_cache import turn


async def ask(server: ManagedServer, args: argparse.Namespace, messages: list[dict],
              salt: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.root_url, timeout=args.timeout,
                                 trust_env=False) as client:
        return await turn(client, args.model, messages, args.max_tokens, {"cache_salt": salt})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--system-tokens", type=int, default=3000)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--serve-args", default="", help="extra flags for python -m app serve")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args(argv)
    salt, control = f"restart-{uuid.uuid4().hex}", f"control-{uuid.uuid4().hex}"
    messages = [{"role": "system", "content": system_prompt(args.system_tokens)},
                {"role": "user", "content": TASKS[0]}]
    server = ManagedServer.spawn_ours(args.serve_args, "bench-restart-",
                                      timeout=args.startup_timeout)
    try:
        first = asyncio.run(ask(server, args, messages, salt))
    finally:
        server.stop(grace=120.0)  # SIGTERM: the engine writes its entries to disk
    messages += [{"role": "assistant", "content": first.pop("text")},
                 {"role": "user", "content": TASKS[1]}]
    server = ManagedServer.spawn_ours(args.serve_args, "bench-restart-",
                                      timeout=args.startup_timeout)
    try:
        after = asyncio.run(ask(server, args, messages, salt))
        cold = asyncio.run(ask(server, args, messages, control))
    finally:
        server.stop()
    for row in (after, cold):
        row.pop("text")
    result = {"turn1_cold": first, "turn2_after_restart": after, "turn2_cold_control": cold,
              "ratio": after["ttft"] / cold["ttft"]}
    for name in ("turn1_cold", "turn2_after_restart", "turn2_cold_control"):
        row = result[name]
        print(f"{name:22s} TTFT {row['ttft']:7.2f} s  prompt {row['prompt_tokens']:5d}  "
              f"cached {row['cached_tokens']:5d}")
    print(f"after restart / cold: {result['ratio']:.3f}x (goal <= 0.2x)")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
