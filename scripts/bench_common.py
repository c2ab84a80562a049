"""Client, statistics and process helpers for scripts/bench_serving.py (stdlib + httpx)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ESSAY = (
    "The lighthouse keepers of the nineteenth century lived by a strict routine that "
    "revolved around the lamp. Every evening before sunset they climbed the spiral stairs, "
    "trimmed the wicks, polished the great lenses and filled the reservoirs with oil. "
    "Through the night they returned to the lantern room every few hours to wind the "
    "clockwork that turned the light, because a beam that stopped rotating could be "
    "mistaken for another station and send a ship onto the rocks. In the morning they "
    "drew the curtains around the glass so that the sun would not crack it or scorch the "
    "brass, and they wrote the weather, the passing vessels and the hours of burning into "
    "a logbook that inspectors read with great care. The work was lonely but not idle. "
    "Keepers repainted the tower, repaired storm damage, rowed to the mainland for "
    "supplies and taught their children at the kitchen table. Many stations were run by "
    "families, and when a keeper died it was common for his widow to take over the post, "
    "which made lighthouse keeping one of the few government jobs open to women at the "
    "time. The arrival of electric lamps, automatic timers and radio beacons slowly made "
    "the keepers unnecessary, and by the end of the twentieth century almost every light "
    "in the world ran without a resident crew. The towers remain, however, as reminders "
    "of a time when the safety of a coast depended on the patience of a few people who "
    "kept a flame burning through every night of the year."
)
TOKENS_PER_WORD = 1.3  # rough BPE average for English prose; real counts come from usage


def _words(n: int) -> str:
    base = ESSAY.split()
    return " ".join(base[i % len(base)] for i in range(max(1, n)))


def build_prompt(style: str, prompt_tokens: int, max_tokens: int, tag: str | None = None) -> str:
    """Deterministic prompt of roughly `prompt_tokens` tokens; `tag` defeats prefix caching."""
    if style == "natural":
        from bench_prompts import natural_prompt

        return natural_prompt(prompt_tokens, tag)
    head = f"[{tag}] " if tag else ""
    if style == "free":  # nothing worth copying: shuffled words, then a request for new text
        words = ESSAY.split()
        random.Random(len(tag or "")).shuffle(words)
        intro = "Here are some scrambled words, ignore them:\n\n"
        tail = ("\n\nNow write an original short story about a cat who learns to sail, in "
                f"your own words, at least {max(100, 2 * max_tokens)} words long.")
        overhead = len((head + intro + tail).split())
        n = max(1, round(prompt_tokens / TOKENS_PER_WORD) - overhead)
        return head + intro + " ".join(words[i % len(words)] for i in range(n)) + tail
    if style == "rag":
        intro = "Quote the following passage verbatim, word for word, from its first word:\n\n"
        tail = "\n\nNow repeat the passage exactly, without any commentary."
    else:
        target = max(200, 2 * max_tokens)
        intro = (
            f"Continue this essay at length in the same style, writing at least {target} "
            "more words. Do not stop early.\n\n"
        )
        tail = ""
    overhead = len((head + intro + tail).split())
    n = round(prompt_tokens / TOKENS_PER_WORD) - overhead
    return head + intro + _words(n) + tail


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no data."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Target:
    name: str
    base_url: str
    model: str
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestResult:
    error: str | None = None
    ttft: float | None = None
    e2e: float = 0.0
    itls: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    content_chunks: int = 0
    finish_reason: str | None = None
    usage_reported: bool = False
    decode_s: float = 0.0  # first -> last content chunk
    retries: int = 0  # connection-level retries before a response arrived


def _chunk_text(obj: dict[str, Any]) -> tuple[str, str | None]:
    text, finish = "", None
    for ch in obj.get("choices") or []:
        delta = ch.get("delta") or {}
        for key in ("content", "reasoning_content", "reasoning"):
            if isinstance(delta.get(key), str):
                text += delta[key]
        finish = ch.get("finish_reason") or finish
    return text, finish


async def stream_one(
    client: httpx.AsyncClient,
    target: Target,
    prompt: str,
    max_tokens: int,
    temperature: float,
    connect_retries: int = 0,
) -> RequestResult:
    """One streaming chat completion; every content chunk is treated as ~one token.
    Failures before any HTTP response are retried up to `connect_retries` times."""
    body: dict[str, Any] = {
        "model": target.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
        **target.extra_body,
    }
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    res = RequestResult()
    t0 = time.perf_counter()
    first = last = None
    done = False
    url = target.base_url.rstrip("/") + "/chat/completions"
    for attempt in range(connect_retries + 1):
        got_response = False
        try:
            async with client.stream("POST", url, json=body, headers=headers) as resp:
                got_response = True
                if resp.status_code != 200:
                    detail = (await resp.aread()).decode(errors="replace")[:200]
                    res.error = f"HTTP {resp.status_code}: {detail}"
                    break
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    obj = json.loads(data)
                    if "error" in obj:
                        res.error = f"stream error: {str(obj['error'])[:200]}"
                        break
                    now = time.perf_counter()
                    text, finish = _chunk_text(obj)
                    if text:
                        if first is None:
                            first = now
                        else:
                            res.itls.append(now - last)  # type: ignore[operator]
                        last = now
                        res.content_chunks += 1
                    res.finish_reason = finish or res.finish_reason
                    usage = obj.get("usage")
                    if usage:
                        res.usage_reported = True
                        res.completion_tokens = int(usage.get("completion_tokens") or 0)
                        res.prompt_tokens = usage.get("prompt_tokens")
            break
        except Exception as exc:  # any transport failure is a benchmark error
            if (
                not got_response
                and attempt < connect_retries
                and isinstance(
                    exc, httpx.ConnectError | httpx.ReadError | httpx.RemoteProtocolError
                )
            ):
                # refused/reset before any response (e.g. a full listen backlog); like the
                # openai SDK, retry. The clock keeps running from the first attempt.
                res.retries += 1
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            res.error = f"{type(exc).__name__}: {exc}"[:300]
            break
    res.e2e = time.perf_counter() - t0
    if res.error is None and (not done or res.finish_reason is None):
        res.error = "incomplete stream"
    if not res.usage_reported:
        res.completion_tokens = res.content_chunks
    if first is not None:
        res.ttft = first - t0
        res.decode_s = last - first  # type: ignore[operator]
    return res


async def run_level(
    client: httpx.AsyncClient,
    target: Target,
    prompts: list[str],
    concurrency: int,
    max_tokens: int,
    temperature: float,
    ramp_s: float = 0.0,
    connect_retries: int = 0,
) -> tuple[list[RequestResult], float]:
    """Send len(prompts) requests with at most `concurrency` in flight (closed loop: each
    worker sends its next request when the previous one ends); worker k starts after
    k * ramp_s. Returns (results, wall seconds)."""
    results: list[RequestResult] = []
    it = iter(prompts)

    async def worker(k: int) -> None:
        await asyncio.sleep(k * ramp_s)
        for prompt in it:  # shared iterator: bounded by len(prompts)
            results.append(
                await stream_one(client, target, prompt, max_tokens, temperature, connect_retries)
            )

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(max(1, min(concurrency, len(prompts))))))
    return results, time.perf_counter() - t0


def aggregate(results: list[RequestResult], wall: float, concurrency: int) -> dict[str, Any]:
    """Per-level summary; latencies in ms except e2e (s). Throughput counts successful requests."""
    ok = [r for r in results if r.error is None]
    ttft = [r.ttft * 1e3 for r in ok if r.ttft is not None]
    itl = [x * 1e3 for r in ok for x in r.itls]
    e2e = [r.e2e for r in ok]
    tpot = [
        (r.e2e - r.ttft) * 1e3 / (r.completion_tokens - 1)
        for r in ok
        if r.ttft is not None and r.completion_tokens > 1
    ]
    per_stream = [
        (r.completion_tokens - 1) / r.decode_s
        for r in ok
        if r.completion_tokens > 1 and r.decode_s > 0
    ]
    tokens = sum(r.completion_tokens for r in ok)
    prompt_toks = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    errors: dict[str, int] = {}
    for r in results:
        if r.error is not None:
            key = r.error[:80]
            errors[key] = errors.get(key, 0) + 1
    return {
        "concurrency": concurrency,
        "num_requests": len(results),
        "errors": len(results) - len(ok),
        "error_kinds": errors,
        "wall_s": wall,
        "ttft_ms_p50": percentile(ttft, 50),
        "ttft_ms_p99": percentile(ttft, 99),
        "itl_ms_p50": percentile(itl, 50),
        "itl_ms_p99": percentile(itl, 99),
        "tpot_ms_p50": percentile(tpot, 50),
        "e2e_s_p50": percentile(e2e, 50),
        "e2e_s_p99": percentile(e2e, 99),
        "total_completion_tokens": tokens,
        "agg_tok_s": tokens / wall if wall > 0 else None,
        "stream_tok_s_mean": sum(per_stream) / len(per_stream) if per_stream else None,
        "mean_completion_tokens": tokens / len(ok) if ok else None,
        "mean_prompt_tokens": sum(prompt_toks) / len(prompt_toks) if prompt_toks else None,
        "finished_by_length": sum(1 for r in ok if r.finish_reason == "length"),
        "usage_reported": sum(1 for r in ok if r.usage_reported),
        "connect_retries": sum(r.retries for r in results),
    }


def result_dict(r: RequestResult) -> dict[str, Any]:
    return asdict(r)


# ----------------------------------------------------------------- server processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_memory_mb(pgid: int) -> dict[str, float | None]:
    """Sum VmRSS over the process group (start_new_session => pgid == leader pid)."""
    rss_kb, hwm_kb, found = 0, None, False
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            fields = dict(
                ln.split(":", 1) for ln in (d / "status").read_text().splitlines() if ":" in ln
            )
        except (OSError, IndexError, ValueError):
            continue
        found = True
        rss_kb += int(fields.get("VmRSS", "0 kB").split()[0])
        if int(d.name) == pgid and "VmHWM" in fields:
            hwm_kb = int(fields["VmHWM"].split()[0])
    return {
        "rss_mb": rss_kb / 1024 if found else None,
        "leader_peak_rss_mb": hwm_kb / 1024 if hwm_kb is not None else None,
    }


class ManagedServer:
    """A server subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, cmd: str, port: int, log_path: Path) -> None:
        self.name, self.cmd, self.port, self.log_path = name, cmd, port, log_path
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def spawn_ours(cls, serve_args: str, log_prefix: str, api_key: str | None = None,
                   timeout: float = 900) -> ManagedServer:
        """Start ``python -m app serve`` on a free loopback port and wait until it is ready."""
        port = free_port()
        log = Path(tempfile.mkdtemp(prefix=log_prefix)) / "server.log"
        cmd = (f"{shlex.quote(sys.executable)} -m app serve --host 127.0.0.1 --port {port} "
               f"{serve_args}")
        server = cls("server", cmd, port, log)
        server.start()
        server.wait_ready(timeout, api_key=api_key)
        print(f"spawned server pid {server.proc.pid}, log {log}", file=sys.stderr)
        return server

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                shlex.split(self.cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float, api_key: str | None = None) -> float:
        """Poll until the server answers: GET {root}/ready if it has one, else {base}/models."""
        assert self.proc is not None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; log "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            try:
                root = self.base_url.rsplit("/v1", 1)[0]
                ready = httpx.get(root + "/ready", timeout=2.0, headers=headers, trust_env=False)
                if ready.status_code == 503:  # a readiness endpoint that says "not yet"
                    time.sleep(0.5)
                    continue
                r = httpx.get(
                    self.base_url + "/models", timeout=2.0, headers=headers, trust_env=False
                )
                if r.status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"{self.name} not ready after {timeout}s; log {self.log_path}:\n{self.log_tail()}"
        )

    def memory(self) -> dict[str, float | None]:
        return group_memory_mb(self.proc.pid) if self.proc else {"rss_mb": None}

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # the leader may be gone while group members linger: final SIGKILL to the group
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)
