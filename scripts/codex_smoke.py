"""Run the real Codex CLI against this server over the Responses API (not part of CI).

Installs ``@openai/codex`` from npm into a temporary prefix (Node and npm from Debian:
``apt-get install nodejs npm``), points a custom provider at the server
(``wire_api = "responses"``, no auth), runs ``codex exec`` on a small task in a scratch
directory, and reports what happened: whether the file appeared, the turns (model
requests), tool calls, and the time taken.

  python scripts/codex_smoke.py --spawn --model qwen2.5-coder-1.5b-instruct
  python scripts/codex_smoke.py --base-url http://127.0.0.1:8000/v1 --model default
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

TASK = "create hello.txt containing hello"


def install_codex(prefix: Path, version: str) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm not found: apt-get install nodejs npm")
    subprocess.run([npm, "install", "--silent", "--prefix", str(prefix),
                    f"@openai/codex@{version}"], check=True)
    return prefix / "node_modules" / ".bin" / "codex"


def write_config(home: Path, base_url: str, model: str, idle_ms: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "local"\n\n'
        "[model_providers.local]\n"
        'name = "mlx-openai-server-lab"\n'
        f'base_url = "{base_url}"\n'
        'wire_api = "responses"\n'
        # A CPU prefills Codex's ~10k-token first prompt in minutes, and Codex counts only
        # events (not keep-alive comments) as activity: wait, and do not resend it.
        f"stream_idle_timeout_ms = {idle_ms}\n"
        "stream_max_retries = 0\n"
        "request_max_retries = 0\n"
    )


def summarize(events: list[dict], scratch: Path, target: str, seconds: float) -> dict:
    kinds = [e.get("type") for e in events]
    items = [e.get("item", {}) for e in events if e.get("type") == "item.completed"]
    commands = [i.get("command") for i in items if i.get("type") == "command_execution"]
    messages = [i.get("text") for i in items if i.get("type") == "agent_message"]
    errors = [e.get("message") or e.get("error") for e in events
              if e.get("type") in ("error", "turn.failed")]
    path = scratch / target
    return {
        "file_created": path.is_file(),
        "file_content": path.read_text(errors="replace")[:200] if path.is_file() else None,
        "model_turns": kinds.count("turn.completed") + kinds.count("turn.failed"),
        "commands": commands,
        "agent_messages": messages,
        "errors": errors,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible /v1 URL (else --spawn)")
    parser.add_argument("--spawn", action="store_true", help="start our server for the run")
    parser.add_argument("--serve-args", default="--prefix-cache-bytes 1073741824",
                        help="extra flags for the spawned server")
    parser.add_argument("--model", default="default")
    parser.add_argument("--task", default=TASK)
    parser.add_argument("--expect-file", default="hello.txt")
    parser.add_argument("--codex-version", default="latest")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    if not args.base_url and not args.spawn:
        parser.error("give --base-url or --spawn")
    work = Path(tempfile.mkdtemp(prefix="codex-smoke-"))
    server = None
    if args.spawn:
        server = ManagedServer.spawn_ours(args.serve_args, "codex-smoke-server-")
    base_url = args.base_url or server.base_url
    try:
        codex = install_codex(work / "npm", args.codex_version)
        home, scratch = work / "codex-home", work / "scratch"
        scratch.mkdir()
        write_config(home, base_url, args.model, int(args.timeout * 1000))
        started = time.monotonic()
        run = subprocess.run(
            [str(codex), "exec", "--json", "--skip-git-repo-check",
             "--dangerously-bypass-approvals-and-sandbox", "-C", str(scratch), args.task],
            env={**os.environ, "CODEX_HOME": str(home)}, capture_output=True, text=True,
            timeout=args.timeout, stdin=subprocess.DEVNULL,
        )
        seconds = time.monotonic() - started
        events = []
        for line in run.stdout.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        report = summarize(events, scratch, args.expect_file, seconds)
        report["codex_exit"] = run.returncode
        if server is not None:
            log = server.log_path.read_text(errors="replace")
            report["responses_requests"] = log.count('"route": "/v1/responses"')
        print(json.dumps(report, indent=2))
        print(f"transcript: {work}", file=sys.stderr)
        (work / "codex-events.jsonl").write_text(run.stdout)
        (work / "codex-stderr.txt").write_text(run.stderr)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
