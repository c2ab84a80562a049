#!/usr/bin/env python3
"""Claude Code against this server: install it, point it here, run one prompt, report.

Installs ``@anthropic-ai/claude-code`` from npm into a temporary prefix (Node and npm from
the system; on Debian ``apt-get install -y nodejs npm`` when they are missing and we are
root), starts the server on a free loopback port with ``claude-*`` mapped to ``--map-to``
(or uses ``--base-url``), and runs ``claude -p PROMPT`` in a scratch directory with
``ANTHROPIC_BASE_URL`` pointing here. Prints the answer, the tool calls Claude Code made,
the turns, the time, and the server's prompt / cached tokens per request.

Claude Code's full system prompt and tool list are ~10k tokens, over a small model's
context; ``--tools`` (default ``Bash``) and ``--system-prompt`` trim them, and
``CLAUDE_CODE_MAX_OUTPUT_TOKENS`` keeps its ``max_tokens`` (32000 by default) under the
model's cap. Not part of CI: it needs npm and minutes of CPU.

  python scripts/claude_code_smoke.py
  python scripts/claude_code_smoke.py --base-url http://127.0.0.1:8000 --prompt "..."
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PACKAGE = "@anthropic-ai/claude-code"
DEFAULT_PROMPT = (
    "Use the Bash tool to run `cat numbers.txt`, then tell me the sum of the numbers in it."
)
DEFAULT_SYSTEM = (
    "You are a coding assistant in a terminal. Use the tools you are given to look at "
    "files; then answer in one short sentence."
)


def ensure_node() -> None:
    if shutil.which("node") and shutil.which("npm"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit("node and npm are needed: install them (Debian: apt-get install nodejs npm)")
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", "nodejs", "npm"], check=True)


def install_claude(prefix: Path) -> Path:
    """npm install into ``prefix``; the package's postinstall puts the native binary in
    place of ``bin/claude.exe``."""
    subprocess.run(["npm", "install", "--global", "--prefix", str(prefix), "--no-fund",
                    "--no-audit", PACKAGE], check=True, stdout=subprocess.DEVNULL)
    claude = prefix / "bin" / "claude"
    version = subprocess.run([str(claude), "--version"], capture_output=True, text=True)
    if version.returncode != 0:
        sys.exit(f"claude does not run: {version.stderr.strip()}")
    print(f"installed {version.stdout.strip()} into {prefix}")
    return claude


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workdir: Path, map_to: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = workdir / "server.log"
    env = {**os.environ, "MLX_SERVER_MODEL_MAP": f"claude-*={map_to}"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=Path(__file__).resolve().parents[1], stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(base + "/ready", timeout=2).status_code == 200:
                return process, base, log
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    sys.exit("server not ready after 600 s")


def run_claude(claude: Path, base: str, args: argparse.Namespace, scratch: Path) -> list[dict]:
    """``claude -p`` with stream-json output; every line it printed, parsed."""
    env = {
        **os.environ,
        "HOME": str(scratch.parent / "home"),  # its config and logs stay in the temp dir
        "ANTHROPIC_BASE_URL": base,
        "ANTHROPIC_API_KEY": args.api_key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(args.max_output_tokens),
        "API_TIMEOUT_MS": str(args.timeout * 1000),
    }
    cmd = [str(claude), "-p", args.prompt, "--model", args.model, "--output-format",
           "stream-json", "--verbose", "--max-turns", str(args.max_turns),
           "--tools", args.tools, "--allowedTools", args.tools]  # no prompts (works as root)
    if args.system_prompt:
        cmd += ["--system-prompt", args.system_prompt]
    done = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True,
                          timeout=args.timeout * (args.max_turns + 1))
    lines = []
    for line in done.stdout.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            lines.append({"type": "text", "text": line})
    if done.returncode != 0:
        print(f"claude exited {done.returncode}; stderr:\n{done.stderr[-2000:]}")
    return lines


def report(lines: list[dict], log: Path | None, seconds: float) -> None:
    """What Claude Code did (from its stream-json lines) and what the server saw."""
    calls = [block for line in lines if line.get("type") == "assistant"
             for block in line["message"].get("content", []) if block.get("type") == "tool_use"]
    result = next((line for line in lines if line.get("type") == "result"), {})
    print(f"\nanswer: {result.get('result')!r}")
    print(f"subtype: {result.get('subtype')}  is_error: {result.get('is_error')}  "
          f"turns: {result.get('num_turns')}  wall: {seconds:.1f}s  "
          f"claude's duration_api_ms: {result.get('duration_api_ms')}")
    for call in calls:
        print(f"tool call: {call['name']} {json.dumps(call.get('input'))[:200]}")
    print(f"usage claude saw: {result.get('usage')}")
    for line in lines:
        if line.get("type") == "text":
            print(f"(non-JSON output) {line['text'][:300]}")
    if log is None:
        return
    print("server requests so far:")
    for text in log.read_text(errors="replace").splitlines():
        if '"event": "request"' in text and "/v1/messages" in text:
            entry = json.loads(text[text.index("{"):])
            print(f"  {entry['path']} {entry['status']} prompt={entry['prompt_tokens']} "
                  f"cached={entry['cached_tokens']} completion={entry['completion_tokens']} "
                  f"latency={entry['latency_ms']}ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="use this server instead of starting one")
    parser.add_argument("--map-to", default="default", help="registry model for claude-*")
    parser.add_argument("--model", default="claude-sonnet-4-5", help="the name claude asks for")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--system-prompt", default=DEFAULT_SYSTEM,
                        help="replaces Claude Code's own ('' keeps its full prompt)")
    parser.add_argument("--tools", default="Bash", help="Claude Code's built-in tools to offer")
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-output-tokens", type=int, default=1024)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per API call")
    parser.add_argument("--api-key", default="sk-local-unused")
    parser.add_argument("--runs", type=int, default=2,
                        help="claude -p runs in a row (the later ones show prefix-cache hits)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    ensure_node()
    workdir = Path(tempfile.mkdtemp(prefix="claude-code-smoke-"))
    server = None
    try:
        claude = install_claude(workdir / "npm")
        log = None
        if args.base_url:
            base = args.base_url.rstrip("/")
        else:
            server, base, log = start_server(workdir, args.map_to)
            print(f"server at {base}, claude-* -> {args.map_to}")
        scratch = workdir / "scratch"
        scratch.mkdir()
        (scratch / "numbers.txt").write_text("17\n25\n")
        for run in range(1, args.runs + 1):
            print(f"\n--- run {run} of {args.runs}")
            started = time.monotonic()
            lines = run_claude(claude, base, args, scratch)
            report(lines, log, time.monotonic() - started)
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
