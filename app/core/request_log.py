"""Structured logs: one JSON line per request (logger ``app.access``) and start-up events.

The access line carries ids, route, status, tokens and timings, never prompt text unless
``--log-prompts`` (a debug flag) is set. Other logs are plain text or, with
``--log-format json``, JSON objects too; fields passed with ``extra=`` become JSON keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from app.core.context import RequestContext

ACCESS_LOGGER = "app.access"
_PROMPT_FIELDS = ("messages", "prompt", "input", "suffix")
_MAX_PROMPT_CHARS = 8192
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object; ``extra`` fields are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class _AccessFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()  # the message already is the JSON line


def setup_logging(level: str, fmt: str = "text", access_log: bool = True) -> None:
    """Root logging for ``serve``; uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers[:] = []
        uv.propagate = True
    # uvicorn's own start-up chatter ("Started server process", "Uvicorn running on …") at
    # debug only: the server logs its own "ready: http://HOST:PORT" line instead.
    if level.upper() != "DEBUG":
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers[:] = []
    access.propagate = False
    access.disabled = not access_log
    if access_log:
        raw = logging.StreamHandler(sys.stderr)
        raw.setFormatter(_AccessFormatter())
        access.addHandler(raw)
        access.setLevel(logging.INFO)


def access_record(
    ctx: RequestContext, *, method: str, route: str, path: str, status: int,
    prompt: Any = None,
) -> dict[str, Any]:
    """The fields of one request's log line."""
    timer = ctx.timer
    record: dict[str, Any] = {
        "ts": round(time.time(), 3),
        "event": "request",
        "request_id": ctx.request_id,
        "house_id": ctx.house_id,
        "source": ctx.source,
        "model": ctx.model,
        "method": method,
        "route": route,
        "path": path[:256],
        "status": status,
        "prompt_tokens": timer.prompt_tokens if timer.sequences else None,
        "completion_tokens": timer.completion_tokens if timer.sequences else None,
        "cached_tokens": timer.cached_tokens if timer.sequences else None,
        "queue_ms": _ms(timer.queue_s),
        "ttft_ms": _ms(timer.ttft_s),
        "latency_ms": ctx.latency_ms(),
    }
    if timer.finish_reasons:
        record["finish_reasons"] = timer.finish_reasons
    if timer.error_code:
        record["error_code"] = timer.error_code
    if prompt is not None:
        record["prompt"] = prompt
    return record


def prompt_text(body: bytes) -> Any:
    """For ``--log-prompts`` only: the prompt-bearing fields of a JSON body, truncated."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    picked = {k: data[k] for k in _PROMPT_FIELDS if k in data}
    if not picked:
        return None
    text = json.dumps(picked, ensure_ascii=False)
    return text if len(text) <= _MAX_PROMPT_CHARS else text[:_MAX_PROMPT_CHARS] + "…"


def log_access(record: dict[str, Any]) -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    if logger.isEnabledFor(logging.INFO) and not logger.disabled:
        logger.info(json.dumps(record, default=str, ensure_ascii=False))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)
