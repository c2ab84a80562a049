"""Graceful shutdown: drain on the first signal, abort on the second, exit 0.

First SIGTERM/SIGINT: readiness goes 503 at once (``ModelManager.draining``), new requests
get 503 ``shutting_down`` while the listening socket stays open (so load balancers see the
503 instead of refused connections), and in-flight requests, streams included, may run for
up to ``drain_timeout_s``. When they are done (or the time is up) uvicorn shuts down.
Second signal, or the drain timeout: the engines stop, which ends every running sequence
with a ``shutting_down`` failure, so each stream gets its final error event and
``data: [DONE]``. A third signal forces uvicorn out without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
ABORT_GRACE_S = 5.0  # after an abort, how long handlers get to write their final events


class Lifecycle:
    """In-flight request count and the drain / abort sequence of one app."""

    def __init__(self, manager: Any, drain_timeout_s: float) -> None:
        self.manager = manager
        self.drain_timeout_s = drain_timeout_s
        self.inflight = 0
        self.aborting = False
        self.drain_task: asyncio.Task | None = None  # kept so the task is not collected

    @property
    def draining(self) -> bool:
        return bool(self.manager.draining)

    def begin_drain(self) -> None:
        self.manager.draining = True

    async def drain(self) -> None:
        """Wait for in-flight requests (bounded), aborting them if they outlast the timeout."""
        self.begin_drain()
        log.info("draining: %d request(s) in flight, timeout %.1fs; a second Ctrl-C (or "
                 "signal) aborts them", self.inflight, self.drain_timeout_s,
                 extra={"event": "drain", "inflight": self.inflight})
        deadline = time.monotonic() + self.drain_timeout_s
        while self.inflight and not self.aborting and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.inflight:
            await self.abort()
            deadline = time.monotonic() + ABORT_GRACE_S
            while self.inflight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        log.info("drained; %d request(s) left", self.inflight,
                 extra={"event": "drained", "inflight": self.inflight})

    async def abort(self) -> None:
        """Stop every engine: running and queued sequences fail with ``shutting_down``."""
        self.aborting = True
        engines = [m.engine for m in self.manager.models.values() if m.engine is not None]
        log.warning("aborting %d in-flight request(s)", self.inflight,
                    extra={"event": "abort", "inflight": self.inflight})
        await asyncio.gather(*(asyncio.to_thread(_stop_engine, e) for e in engines))


def _stop_engine(engine: Any) -> None:
    try:
        engine.stop()
    except Exception:  # noqa: BLE001 - shutting down anyway; keep stopping the others
        log.exception("engine stop failed")


def make_server(config: Any, lifecycle: Lifecycle) -> Any:
    """A ``uvicorn.Server`` whose signal handling drains first (imports uvicorn lazily)."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises a caught signal after a clean shutdown (exit status 143);
        this server treats a drained shutdown as success and returns normally instead."""

        def __init__(self) -> None:
            super().__init__(config)
            self.signals = 0
            self.loop: asyncio.AbstractEventLoop | None = None

        async def startup(self, sockets: Any = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().startup(sockets=sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.signals += 1
            if self.loop is None or not self.started:  # still starting: just stop
                self.should_exit = True
                lifecycle.begin_drain()
                return
            if self.signals == 1:
                self.loop.call_soon_threadsafe(self._start_drain)
            elif self.signals == 2:
                self.loop.call_soon_threadsafe(self._start_abort)
            else:
                self.force_exit = True
                self.should_exit = True

        def _start_drain(self) -> None:
            async def run() -> None:
                try:
                    await lifecycle.drain()
                finally:
                    self.should_exit = True

            lifecycle.drain_task = asyncio.ensure_future(run())

        def _start_abort(self) -> None:
            lifecycle.aborting = True  # the drain loop sees it and aborts the engines

    return GracefulServer()
