"""Run the real Continue CLI (``cn``) against this server over chat completions (not CI).

Installs ``@continuedev/cli`` from npm into a temporary prefix (Node and npm from Debian:
``apt-get install nodejs npm``), writes a Continue ``config.yaml`` with one
``provider: openai`` model whose ``apiBase`` is the server, and runs
``cn -p --format json --config FILE PROMPT`` with its home (``~/.continue``) in the temp
directory: no login, OpenTelemetry metrics off. A Node preload records (and refuses) every
request ``cn`` makes to a host other than the loopback one. Prints cn's answer and exit
status, the outside requests, and our server's requests (route, status, tokens) from its
access log.

  python scripts/continue_smoke.py --spawn
  python scripts/continue_smoke.py --url http://127.0.0.1:8000/v1 --server-log server.log
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import ManagedServer

PACKAGE = "@continuedev/cli"
PROMPT = "What is the capital of France? Answer in one word."

# Loaded into cn with NODE_OPTIONS=--import: outside fetches are logged and refused.
OUTSIDE_HOOK = """\
import { appendFileSync } from "node:fs";
const log = process.env.CONTINUE_SMOKE_OUTSIDE_LOG;
const local = new Set(["127.0.0.1", "localhost", "[::1]"]);
const original = globalThis.fetch;
globalThis.fetch = async (input, init) => {
  const url = new URL(typeof input === "string" ? input : input.url ?? String(input));
  if (url.protocol.startsWith("http") && !local.has(url.hostname)) {
    appendFileSync(log, `${url.origin}${url.pathname}\\n`);
    throw new TypeError(`continue_smoke: refused outside request to ${url.origin}`);
  }
  return original(input, init);
};
"""


def install_cn(prefix: Path, version: str) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm not found: apt-get install nodejs npm")
    subprocess.run([npm, "install", "--silent", "--no-fund", "--no-audit", "--prefix",
                    str(prefix), f"{PACKAGE}@{version}"], check=True)
    return prefix / "node_modules" / ".bin" / "cn"


def write_config(path: Path, base_url: str, model: str, api_key: str) -> None:
    path.write_text(
        "name: mlx-openai-server-lab\n"
        "version: 0.0.1\n"
        "schema: v1\n"
        "models:\n"
        "  - name: local\n"
        "    provider: openai\n"
        f"    model: {model}\n"
        f"    apiBase: {base_url}\n"
        f"    apiKey: {api_key}\n"
        "    roles: [chat]\n"
    )


def cn_env(work: Path) -> dict[str, str]:
    home = work / "home"
    home.mkdir(exist_ok=True)
    (work / "outside.mjs").write_text(OUTSIDE_HOOK)
    return {
        **os.environ,
        "HOME": str(home),
        "CONTINUE_GLOBAL_DIR": str(home / ".continue"),  # sessions, logs, permissions
        "CONTINUE_CLI_ENABLE_TELEMETRY": "0",
        "CONTINUE_METRICS_ENABLED": "0",
        "CONTINUE_SMOKE_OUTSIDE_LOG": str(work / "outside.txt"),
        "NODE_OPTIONS": f"--import {work / 'outside.mjs'}",
    }


def server_requests(log: Path, offset: int) -> list[dict]:
    """Our access-log lines for /v1 routes written after ``offset``, trimmed."""
    keep = ("method", "path", "status", "prompt_tokens", "completion_tokens", "cached_tokens",
            "latency_ms", "finish_reasons")
    found = []
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "request" and str(entry.get("path", "")).startswith("/v1"):
            found.append({key: entry.get(key) for key in keep})
    return found


def run_cn(cn: Path, config: Path, prompt: str, work: Path, timeout: float) -> dict:
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    started = time.monotonic()
    try:
        done = subprocess.run(
            [str(cn), "-p", "--format", "json", "--config", str(config), prompt],
            cwd=scratch, env=cn_env(work), capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        stdout, stderr, code = str(exc.stdout or ""), str(exc.stderr or ""), "timeout"
    try:
        answer = json.loads(stdout)
    except ValueError:
        answer = stdout.strip()
    outside = work / "outside.txt"
    return {
        "cn_exit": code,
        "answer": answer,
        "stderr_tail": stderr.strip()[-2000:],
        "outside_requests": outside.read_text().split() if outside.exists() else [],
        "seconds": round(time.monotonic() - started, 1),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-args", default="", help="extra flags for the spawned server")
    parser.add_argument("--server-log", type=Path, help="with --url: the server's log to read")
    parser.add_argument("--model", default="default")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--cn-version", default="1.5.47")
    parser.add_argument("--timeout", type=float, default=600)
    server = parser.add_mutually_exclusive_group(required=True)
    server.add_argument("--url", help="an OpenAI-compatible /v1 URL")
    server.add_argument("--spawn", action="store_true", help="start our server for the run")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="continue-smoke-"))
    server = ManagedServer.spawn_ours(args.serve_args, "continue-smoke-server-") \
        if args.spawn else None
    base_url = args.url or server.base_url
    try:
        cn = install_cn(work / "npm", args.cn_version)
        config = work / "config.yaml"
        write_config(config, base_url, args.model, args.api_key)
        log = server.log_path if server is not None else args.server_log
        offset = log.stat().st_size if log is not None else 0
        report = run_cn(cn, config, args.prompt, work, args.timeout)
        if log is not None:
            report["server_requests"] = server_requests(log, offset)
        print(json.dumps(report, indent=2))
        print(f"config and cn's home: {work}", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
