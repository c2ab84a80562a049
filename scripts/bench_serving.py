#!/usr/bin/env python3
"""Serving benchmark for any OpenAI-compatible server (streaming /chat/completions).

Single target:
  python scripts/bench_serving.py --base-url http://127.0.0.1:8000/v1 --model default \
      --concurrency 1,4,8 --json out.json
Compare (starts both servers on free loopback ports, same sweep, ratios ours/theirs):
  python scripts/bench_serving.py --compare --mlx-dir /tmp/mlx-model --json cmp.json

Metrics treat one SSE content chunk as ~one token (ITL is inter-chunk time); completion
token counts come from the usage chunk when the server sends it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shlex
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from bench_common import (
    ManagedServer,
    Target,
    aggregate,
    build_prompt,
    free_port,
    result_dict,
    run_level,
    stream_one,
)

OURS_CMD = "{python} -m app serve --host 127.0.0.1 --port {port}"
# mlx_lm.server runs with the same OpenBLAS as ours (scripts/run_with_blas.py), so the
# comparison is between servers, not BLAS libraries.
THEIRS_CMD = (
    "{python} scripts/run_with_blas.py mlx_lm.server --model {mlx_dir} "
    "--host 127.0.0.1 --port {port}"
)
# (label, key, higher_is_better)
METRICS: list[tuple[str, str, bool]] = [
    ("agg tok/s", "agg_tok_s", True),
    ("stream tok/s (mean)", "stream_tok_s_mean", True),
    ("TTFT p50 ms", "ttft_ms_p50", False),
    ("TTFT p99 ms", "ttft_ms_p99", False),
    ("ITL p50 ms", "itl_ms_p50", False),
    ("ITL p99 ms", "itl_ms_p99", False),
    ("e2e p50 s", "e2e_s_p50", False),
    ("e2e p99 s", "e2e_s_p99", False),
    ("errors", "errors", False),
    ("connect retries", "connect_retries", False),
]
COUNTS = ("errors", "connect_retries")  # shown side by side, no ratio


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").strip().split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--model", default="default")
    p.add_argument("--api-key", default=None)
    p.add_argument("--concurrency", default="1,4,8,16,32", help="comma-separated levels")
    p.add_argument(
        "--num-requests",
        type=int,
        default=None,
        help="requests per level (default max(8, 2*concurrency))",
    )
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--prompt-tokens", type=int, default=128, help="approximate prompt length")
    p.add_argument(
        "--prompt-style",
        choices=["natural", "essay", "rag", "free"],
        default="natural",
        help="natural: questions, instructions and free writing, nothing to copy (the "
        "headline); COPY-HEAVY, report as their own rows: essay (continue a repeated essay), "
        "rag (passage + 'quote it verbatim'); free: a new story after scrambled words",
    )
    p.add_argument(
        "--same-prompt",
        action="store_true",
        help="identical prompts (default: a per-request tag defeats prefix caches)",
    )
    p.add_argument("--extra-body", default="{}", help="JSON merged into every request body")
    p.add_argument(
        "--ramp-ms",
        type=float,
        default=5.0,
        help="stagger between the first requests of a level (0 = pure burst; "
        "mlx_lm.server listens with backlog 5 and drops 32-connection bursts)",
    )
    p.add_argument(
        "--connect-retries",
        type=int,
        default=2,
        help="retries of requests refused/reset before any response (as the openai "
        "SDK does); counted in connect_retries, time included in TTFT/e2e",
    )
    p.add_argument("--warmup", type=int, default=2, help="sequential warm-up requests")
    p.add_argument("--settle-s", type=float, default=2.0,
                   help="pause before each level, so that neither server starts one while "
                        "the machine is still busy with the other's (compare mode alternates)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    p.add_argument("--json", dest="json_out", default=None, help="write results JSON here")
    p.add_argument(
        "--include-requests", action="store_true", help="add per-request records to the JSON"
    )
    c = p.add_argument_group("compare mode")
    c.add_argument("--compare", action="store_true", help="start ours and theirs and compare")
    c.add_argument("--ours-cmd", default=OURS_CMD)
    c.add_argument("--theirs-cmd", default=THEIRS_CMD)
    c.add_argument("--mlx-dir", default=None, help="mlx-lm model directory for {mlx_dir}")
    c.add_argument("--ours-model", default="default")
    c.add_argument(
        "--theirs-model",
        default=None,
        help="default: --mlx-dir verbatim (mlx_lm.server maps that exact string, "
        "or 'default_model', to its --model without reloading)",
    )
    c.add_argument(
        "--order",
        choices=["alternate", "sequential"],
        default="alternate",
        help="alternate: swap which server goes first at every level",
    )
    c.add_argument(
        "--theirs-threads",
        type=int,
        default=None,
        help="OPENBLAS_NUM_THREADS for the baseline alone (measure 1 and 2 on a 2-core "
        "machine and report its faster one; default: inherited)",
    )
    c.add_argument("--startup-timeout", type=float, default=600.0)
    c.add_argument("--log-dir", default=None, help="server logs (default: a temp dir)")
    a = p.parse_args(argv)
    a.levels = list(dict.fromkeys(int(x) for x in a.concurrency.split(",") if x.strip()))
    if not a.levels or min(a.levels) < 1:
        p.error("--concurrency needs positive integers")
    a.extra = json.loads(a.extra_body)
    if a.compare and a.mlx_dir is None and ("{mlx_dir}" in a.ours_cmd + a.theirs_cmd):
        p.error("--compare needs --mlx-dir (or commands without {mlx_dir})")
    return a


def style_label(style: str) -> str:
    """How a row's prompts are labelled: copy-heavy styles never pass for natural ones."""
    copy_heavy = {"essay": "continue an essay", "rag": "quote a passage"}
    if style in copy_heavy:
        return f"COPY-HEAVY prompts ({copy_heavy[style]}): prompt-lookup drafts accepted"
    return f"{style} prompts"


def fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def print_single(name: str, levels: list[dict[str, Any]]) -> None:
    cols = [
        "conc",
        "n",
        "err",
        "retry",
        "TTFT50",
        "TTFT99",
        "ITL50",
        "ITL99",
        "e2e50",
        "e2e99",
        "tok/s",
        "strm t/s",
        "avg toks",
    ]
    keys = [
        "concurrency",
        "num_requests",
        "errors",
        "connect_retries",
        "ttft_ms_p50",
        "ttft_ms_p99",
        "itl_ms_p50",
        "itl_ms_p99",
        "e2e_s_p50",
        "e2e_s_p99",
        "agg_tok_s",
        "stream_tok_s_mean",
        "mean_completion_tokens",
    ]
    print(f"\n== {name}  (TTFT/ITL in ms, e2e in s)")
    print(" ".join(f"{c:>9}" for c in cols))
    for lv in levels:
        print(" ".join(f"{fmt(lv[k], 2 if k.startswith('e2e') else 1):>9}" for k in keys))


def print_compare(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    print(f"\n{'conc':>5}  {'metric':<22}{'ours':>11}{'theirs':>11}{'ours/theirs':>13}")
    for o, t in zip(ours, theirs, strict=True):
        for i, (label, key, hib) in enumerate(METRICS):
            ratio = o[key] / t[key] if key not in COUNTS and o[key] is not None and t[key] else None
            hint = "(>1 better)" if hib else "(<1 better)"
            conc = str(o["concurrency"]) if i == 0 else ""
            print(
                f"{conc:>5}  {label:<22}{fmt(o[key], 2):>11}{fmt(t[key], 2):>11}"
                f"{fmt(ratio, 3):>13} {'' if key in COUNTS else hint}"
            )


def ratios(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for o, t in zip(ours, theirs, strict=True):
        r = {
            key: (o[key] / t[key] if o[key] is not None and t[key] else None)
            for _, key, _ in METRICS
            if key not in COUNTS
        }
        out.append({"concurrency": o["concurrency"], "ours_over_theirs": r})
    return out


def prompts_for(args: argparse.Namespace, n: int, label: str) -> list[str]:
    return [
        build_prompt(
            args.prompt_style,
            args.prompt_tokens,
            args.max_tokens,
            None if args.same_prompt else f"{label}-{i}",
        )
        for i in range(n)
    ]


async def warmup(client: httpx.AsyncClient, target: Target, args: argparse.Namespace) -> None:
    for i, prompt in enumerate(prompts_for(args, args.warmup, "warmup")):
        r = await stream_one(
            client, target, prompt, args.max_tokens, args.temperature, args.connect_retries
        )
        print(
            f"  warm-up {target.name} #{i}: {fmt(r.e2e, 2)}s tokens={r.completion_tokens}"
            f" err={r.error}",
            flush=True,
        )


SPEC_COUNTERS = ("drafts", "draft_tokens", "accepted_tokens", "emitted_tokens")


async def spec_counters(client: httpx.AsyncClient, target: Target) -> dict[str, float] | None:
    """Our ``vllm:spec_decode_num_*_total`` counters summed over models; None if not exposed."""
    root = target.base_url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    try:
        r = await client.get(f"{root}/metrics", headers=headers)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    found: dict[str, float] = {}
    for line in r.text.splitlines():
        for name in SPEC_COUNTERS:
            if line.startswith(f"vllm:spec_decode_num_{name}_total{{"):
                found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return found if len(found) == len(SPEC_COUNTERS) else None


def spec_summary(before: dict | None, after: dict | None) -> dict[str, float | None]:
    """Acceptance rate and tokens per verification pass over one level."""
    if before is None or after is None:
        return {}
    d = {k: after[k] - before[k] for k in SPEC_COUNTERS}
    return {
        "spec_passes": d["drafts"],
        "spec_acceptance": d["accepted_tokens"] / d["draft_tokens"] if d["draft_tokens"] else None,
        "spec_tokens_per_pass": d["emitted_tokens"] / d["drafts"] if d["drafts"] else None,
    }


async def bench(
    args: argparse.Namespace, targets: list[Target], servers: dict[str, ManagedServer]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        t.name: {"base_url": t.base_url, "model": t.model, "levels": [], "requests": {}}
        for t in targets
    }
    limits = httpx.Limits(
        max_connections=max(args.levels) + 4, max_keepalive_connections=max(args.levels) + 4
    )
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        for t in targets:
            await warmup(client, t, args)
            if t.name in servers:
                out[t.name]["memory_after_warmup"] = servers[t.name].memory()
        if args.order == "sequential":
            plan = [(i, t) for t in targets for i in range(len(args.levels))]
        else:  # alternate: at odd levels the second server goes first
            plan = [
                (i, t)
                for i in range(len(args.levels))
                for t in (targets if i % 2 == 0 else targets[::-1])
            ]
        for i, t in plan:
            c = args.levels[i]
            n = args.num_requests or max(8, 2 * c)
            await asyncio.sleep(args.settle_s)  # each level starts on a quiet machine
            print(f"  {t.name}: concurrency {c}, {n} requests ...", flush=True)
            spec_before = await spec_counters(client, t)
            res, wall = await run_level(
                client,
                t,
                prompts_for(args, n, f"c{c}"),
                c,
                args.max_tokens,
                args.temperature,
                args.ramp_ms / 1e3,
                args.connect_retries,
            )
            level = aggregate(res, wall, c)
            level.update(spec_summary(spec_before, await spec_counters(client, t)))
            if level.get("spec_passes"):
                print(f"    speculation: acceptance {fmt(level['spec_acceptance'], 3)}, "
                      f"{fmt(level['spec_tokens_per_pass'], 2)} tokens per pass", flush=True)
            out[t.name]["levels"].append(level)
            if args.include_requests:
                out[t.name]["requests"][str(c)] = [result_dict(r) for r in res]
        for t in targets:
            out[t.name]["levels"].sort(key=lambda lv: args.levels.index(lv["concurrency"]))
            if t.name in servers:
                out[t.name]["memory_after_run"] = servers[t.name].memory()
            if not args.include_requests:
                del out[t.name]["requests"]
    return out


def _sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    servers: dict[str, ManagedServer] = {}
    targets = [Target("target", args.base_url, args.model, args.api_key, args.extra)]
    try:
        if args.compare:
            log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench_serving_"))
            log_dir.mkdir(parents=True, exist_ok=True)
            targets = []
            for name, tmpl, model in (
                ("ours", args.ours_cmd, args.ours_model),
                ("theirs", args.theirs_cmd, args.theirs_model or args.mlx_dir),
            ):
                port = free_port()
                cmd = tmpl.format(
                    python=shlex.quote(sys.executable),
                    port=port,
                    mlx_dir=shlex.quote(args.mlx_dir or ""),
                )
                if name == "theirs" and args.theirs_threads is not None:
                    cmd = f"env OPENBLAS_NUM_THREADS={args.theirs_threads} {cmd}"
                srv = ManagedServer(name, cmd, port, log_dir / f"{name}.log")
                print(f"starting {name}: {cmd}  (log {srv.log_path})", flush=True)
                srv.start()
                servers[name] = srv
                targets.append(Target(name, srv.base_url, model, args.api_key, args.extra))
            for srv in servers.values():
                waited = srv.wait_ready(args.startup_timeout, args.api_key)
                print(f"{srv.name} ready after {waited:.1f}s at {srv.base_url}", flush=True)
        results = asyncio.run(bench(args, targets, servers))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for srv in servers.values():
            srv.stop()
    label = style_label(args.prompt_style)
    for t in targets:
        r = results[t.name]
        print_single(f"{t.name}: {t.base_url} model={t.model} [{label}]", r["levels"])
        for k in ("memory_after_warmup", "memory_after_run"):
            if k in r:
                print(f"  {k}: {r[k]}")
    doc: dict[str, Any] = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "compare" if args.compare else "single",
        "config": {
            k: ("***" if k == "api_key" and v else v) for k, v in vars(args).items() if k != "extra"
        },
        "commands": {s.name: s.cmd for s in servers.values()},
        "results": results,
    }
    if args.compare:
        print(f"\nprompts: {label}")
        print_compare(results["ours"]["levels"], results["theirs"]["levels"])
        doc["comparison"] = ratios(results["ours"]["levels"], results["theirs"]["levels"])
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=2))
        print(f"\nwrote {args.json_out}")
    return 1 if any(lv["errors"] for r in results.values() for lv in r["levels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
