"""TEST-ONLY fault injection for the robustness suite (never set these in production).

Two environment variables, read when a language model's engine starts; when neither is
set, no hook is installed and the engine runs exactly as without this module:

- ``MLX_SERVER_TEST_FAULT_AFTER_TOKENS=k``: a request whose request id (``X-Request-ID``
  header or ``metadata.requestId``) starts with ``fault-injection-`` fails after its k-th
  generated token (``RuntimeError``); ``fault-injection-oom-`` raises ``MemoryError``
  instead, as an out-of-memory would. Only that request fails: it gets a 500 envelope, or
  a stream's error event then ``[DONE]``; every other request is untouched.
- ``MLX_SERVER_TEST_TOKEN_DELAY_MS=d``: every generated token costs ``d`` ms more on the
  engine thread, so tests can keep streams in flight (shutdown and disconnect tests).

The request id is the opt-in because it already reaches the engine
(``GenerationRequest.request_id``), so no handler code knows about faults.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

FAULT_ENV = "MLX_SERVER_TEST_FAULT_AFTER_TOKENS"
DELAY_ENV = "MLX_SERVER_TEST_TOKEN_DELAY_MS"
FAULT_PREFIX = "fault-injection-"
OOM_PREFIX = "fault-injection-oom-"


class InjectedFault(RuntimeError):
    """Raised by the test-only hook (its message says so)."""


def fault_hook_from_env() -> Callable[[Any, int], None] | None:
    """The engine ``fault_hook`` the environment asks for, or None (the normal case)."""
    after = os.environ.get(FAULT_ENV)
    delay_ms = float(os.environ.get(DELAY_ENV) or 0)
    if not after and delay_ms <= 0:
        return None
    limit = int(after) if after else None
    log.warning("TEST-ONLY fault injection enabled (fault after %s tokens, delay %g ms)",
                limit, delay_ms, extra={"event": "test_fault_hook"})

    def hook(request: Any, tokens: int) -> None:
        if delay_ms > 0:
            time.sleep(delay_ms / 1000.0)
        if limit is None or tokens <= limit:
            return
        request_id = str(getattr(request, "request_id", ""))
        if request_id.startswith(OOM_PREFIX):
            raise MemoryError(f"injected out-of-memory after {limit} tokens (test-only hook)")
        if request_id.startswith(FAULT_PREFIX):
            raise InjectedFault(f"injected fault after {limit} tokens (test-only hook)")

    return hook
