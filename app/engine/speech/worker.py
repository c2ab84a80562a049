"""A speech model's worker: jobs run one at a time on the thread that owns the model.

A job is a function of one argument, ``emit``, that runs on the worker thread and may
call ``emit(event)`` for partial results (a transcript segment, a synthesized sentence);
they reach the caller's event loop in order, as an async iterator, and the function's
return value ends it. At most ``queue_depth`` jobs wait (more: :class:`QueueFullError`,
a 429 for the client). A caller that goes away cancels its job: ``emit`` then raises
:class:`JobCancelled` at the job's next partial result, and a job still queued is
skipped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

from app.core.blas.governor import blas_governor
from app.engine.base import QueueFullError, QueueWorker

logger = logging.getLogger(__name__)

Emit = Callable[[Any], None]
_DONE = object()


class JobCancelled(Exception):
    """The caller went away; the job stops at its next partial result."""


@dataclass
class SpeechWorkerStats:
    jobs_served: int = 0
    jobs_failed: int = 0
    jobs_cancelled: int = 0
    busy_seconds: float = 0.0


@dataclass
class JobOutcome:
    """What a finished job returned and how long it ran on the worker (seconds)."""

    value: Any
    compute_seconds: float
    queued_seconds: float


class _Job:
    __slots__ = ("fn", "loop", "events", "cancelled", "queued_at")

    def __init__(self, fn: Callable[[Emit], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.queued_at = time.perf_counter()

    def post(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # event loop closed: nobody listens any more
            self.cancelled.set()


class SpeechWorker(QueueWorker):
    """Runs a speech model's jobs in order on its own thread (see the module docstring)."""

    thread_suffix = "speech"
    held_what = "requests already waiting"

    def __init__(self, *, name: str, queue_depth: int = 64,
                 warmup: Callable[[], object] | None = None) -> None:
        super().__init__(name=name, queue_depth=queue_depth, warmup=warmup)
        self.stats = SpeechWorkerStats()
        self._blas = blas_governor()

    def stats_snapshot(self) -> dict[str, Any]:
        with self._stats_lock:
            snap = asdict(self.stats)
            snap["waiting"] = self.held
        return snap

    # -- asyncio side --------------------------------------------------------------------
    async def stream(self, fn: Callable[[Emit], Any]) -> AsyncIterator[Any]:
        """Queue ``fn``; yield its partial results, then one :class:`JobOutcome`."""
        job = _Job(fn, asyncio.get_running_loop())
        self._submit(job)  # QueueFullError; EngineStoppedError while the model unloads
        try:
            while True:
                item = await job.events.get()
                if isinstance(item, JobOutcome):
                    yield item
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled.set()  # a no-op once finished; stops a job whose caller left

    async def run(self, fn: Callable[[Emit], Any]) -> JobOutcome:
        """Queue ``fn`` and wait for its outcome (partial results are dropped)."""
        events = self.stream(fn)
        try:
            async for item in events:
                if isinstance(item, JobOutcome):
                    return item
        finally:
            await events.aclose()  # a cancelled caller cancels the job at once
        raise RuntimeError(f"{self.name}: job ended without an outcome")

    # -- worker thread -------------------------------------------------------------------
    def _serve(self, item: _Job) -> None:
        self._release()  # a job counts against the queue depth while it waits
        if item.cancelled.is_set():
            self._count(jobs_cancelled=1)
            return None

        def emit(event: Any) -> None:
            if item.cancelled.is_set():
                raise JobCancelled()
            item.post(event)

        started = time.perf_counter()
        try:
            if self._blas is not None:
                with self._blas.computing(self, 1):
                    value = item.fn(emit)
            else:
                value = item.fn(emit)
        except JobCancelled:
            self._count(jobs_cancelled=1)
            return None
        except Exception as exc:  # noqa: BLE001 - the caller gets the error, the thread lives
            logger.exception("%s: job failed", self.name)
            self._count(jobs_failed=1)
            item.post(exc)
            return None
        seconds = time.perf_counter() - started
        with self._stats_lock:
            self.stats.jobs_served += 1
            self.stats.busy_seconds += seconds
        item.post(JobOutcome(value, seconds, started - item.queued_at))
        return None

    def _fail(self, item: _Job, exc: BaseException) -> None:
        self._release()  # only jobs that never started fail here (the worker stopped)
        item.post(exc)


__all__ = ["Emit", "JobCancelled", "JobOutcome", "QueueFullError", "SpeechWorker"]
