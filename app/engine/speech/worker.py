"""A speech model's worker: jobs run one at a time on the thread that owns the model.

A job is a function of one argument, ``emit``, that runs on the worker thread and may
call ``emit(event)`` for partial results (a transcript segment, a synthesized sentence);
they reach the caller's event loop in order, as an async iterator, and the function's
return value ends it. At most ``queue_depth`` jobs wait (more: :class:`QueueFullError`,
a 429 for the client). A caller that goes away cancels its job: ``emit`` then raises
:class:`JobCancelled` at the job's next partial result, and a job still queued is
skipped.

A :class:`Stepped` job can share model calls with the other stepped jobs of its
``group`` (a Whisper model's transcriptions: their decoder steps run as one batch). The
worker then runs a batch instead of one job: between two steps it admits the stepped
jobs queued since (up to ``max_batch`` at once), drops members whose callers left, and
answers each member as it ends. A job of another kind that arrives meanwhile waits
until the batch is empty (and stops further admissions, so it is not overtaken for long).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from app.core.blas.governor import blas_governor
from app.engine.base import STOP, QueueFullError, QueueWorker

logger = logging.getLogger(__name__)

Emit = Callable[[Any], None]
_DONE = object()


class JobCancelled(Exception):
    """The caller went away; the job stops at its next partial result."""


class StepBatch(Protocol):
    """What a :class:`Stepped` job's ``open_batch`` returns."""

    def __len__(self) -> int: ...

    def add(self, job: Any) -> object:
        """Admit what a job's ``start`` made; returns its member handle."""

    def drop(self, member: Any) -> None:
        """Remove a member whose caller left."""

    def step(self) -> list[tuple[Any, Any, BaseException | None]]:
        """One step of every member: (member, value, error) for each that ended."""


@dataclass(frozen=True)
class Stepped:
    """A job that may run in one batch with the other stepped jobs of ``group``."""

    group: object
    open_batch: Callable[[], StepBatch]
    start: Callable[[Emit], Any]  # -> what the batch's ``add`` takes


Job = Callable[[Emit], Any] | Stepped


@dataclass
class SpeechWorkerStats:
    jobs_served: int = 0
    jobs_failed: int = 0
    jobs_cancelled: int = 0
    busy_seconds: float = 0.0
    batches: int = 0  # busy periods of stepped jobs
    batch_steps: int = 0  # steps those batches ran
    batched_job_steps: int = 0  # member-steps of those (over batch_steps: mean batch size)


@dataclass
class JobOutcome:
    """What a finished job returned and how long it ran on the worker (seconds)."""

    value: Any
    compute_seconds: float
    queued_seconds: float


class _Job:
    __slots__ = ("fn", "loop", "events", "cancelled", "queued_at", "started_at")

    def __init__(self, fn: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.queued_at = time.perf_counter()
        self.started_at = 0.0

    def post(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # event loop closed: nobody listens any more
            self.cancelled.set()


class SpeechWorker(QueueWorker):
    """Runs a speech model's jobs in order on its own thread (see the module docstring)."""

    thread_suffix = "speech"
    held_what = "requests already waiting"

    def __init__(self, *, name: str, queue_depth: int = 64, max_batch: int = 8,
                 warmup: Callable[[], object] | None = None) -> None:
        super().__init__(name=name, queue_depth=queue_depth, warmup=warmup)
        self.max_batch = max(1, max_batch)
        self.stats = SpeechWorkerStats()
        self._blas = blas_governor()

    def stats_snapshot(self) -> dict[str, Any]:
        with self._stats_lock:
            snap = asdict(self.stats)
            snap["waiting"] = self.held
        return snap

    # -- asyncio side --------------------------------------------------------------------
    async def stream(self, fn: Job) -> AsyncIterator[Any]:
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

    async def run(self, fn: Job) -> JobOutcome:
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
    def _serve(self, item: _Job) -> object | None:
        backlog: deque[Any] = deque([item])  # jobs a batch took from the queue but left
        while backlog:
            job = backlog.popleft()
            if job is STOP:
                return STOP
            if isinstance(job.fn, Stepped):
                backlog = self._serve_batch(job, backlog)
            else:
                self._left_queue(job)
                self._serve_alone(job)
        return None

    def _left_queue(self, item: _Job) -> None:
        self._release()  # a job counts against the queue depth while it waits
        item.started_at = time.perf_counter()

    @staticmethod
    def _emitter(item: _Job) -> Emit:
        def emit(event: Any) -> None:
            if item.cancelled.is_set():
                raise JobCancelled()
            item.post(event)

        return emit

    def _serve_alone(self, item: _Job) -> None:
        if item.cancelled.is_set():
            self._count(jobs_cancelled=1)
            return
        try:
            if self._blas is not None:
                with self._blas.computing(self, 1):
                    value = item.fn(self._emitter(item))
            else:
                value = item.fn(self._emitter(item))
        except Exception as exc:  # noqa: BLE001 - the caller gets the error, the thread lives
            self._finish(item, None, exc)
            return
        self._finish(item, value, None)

    def _finish(self, item: _Job, value: Any, error: BaseException | None,
                busy: bool = True) -> None:
        """Answer ``item``; ``busy``: count its time as the worker's (not for batch members,
        whose shared time the batch counts once)."""
        if isinstance(error, JobCancelled):
            self._count(jobs_cancelled=1)
            return
        if error is not None:
            logger.error("%s: job failed", self.name, exc_info=error)
            self._count(jobs_failed=1)
            item.post(error)
            return
        seconds = time.perf_counter() - item.started_at
        with self._stats_lock:
            self.stats.jobs_served += 1
            self.stats.busy_seconds += seconds if busy else 0.0
        item.post(JobOutcome(value, seconds, item.started_at - item.queued_at))

    def _serve_batch(self, first: _Job, backlog: deque[Any]) -> deque[Any]:
        """Run ``first``, the stepped jobs of its group at the head of ``backlog`` and
        those queued while it runs; returns what is left to serve after it, in order
        (other jobs, and the stop marker if it was taken)."""
        assert isinstance(first.fn, Stepped)
        group, batch = first.fn.group, first.fn.open_batch()

        def joins(job: Any) -> bool:
            return (job is not STOP and isinstance(job.fn, Stepped)
                    and job.fn.group is group)

        waiting: deque[_Job] = deque([first])
        while backlog and joins(backlog[0]):
            waiting.append(backlog.popleft())
        later: deque[Any] = backlog  # served once the batch is empty
        members: dict[Any, _Job] = {}
        stopping = STOP in later
        started = time.perf_counter()
        steps = member_steps = 0
        while True:
            while not stopping and (item := self._take(0)) is not None:
                stopping = item is STOP
                if not later and joins(item):
                    waiting.append(item)
                else:
                    later.append(item)
            while waiting and len(members) < self.max_batch:
                self._admit(waiting.popleft(), batch, members)
            for member, job in list(members.items()):
                if job.cancelled.is_set():
                    batch.drop(member)
                    del members[member]
                    self._count(jobs_cancelled=1)
            if not members:
                if waiting:
                    continue
                break
            steps, member_steps = steps + 1, member_steps + len(members)
            if self._blas is not None:
                with self._blas.computing(self, 1):
                    ended = batch.step()
            else:
                ended = batch.step()
            for member, value, error in ended:
                if (job := members.pop(member, None)) is not None:  # else dropped already
                    self._finish(job, value, error, busy=False)
        with self._stats_lock:
            self.stats.busy_seconds += time.perf_counter() - started
            self.stats.batches += 1
            self.stats.batch_steps += steps
            self.stats.batched_job_steps += member_steps
        return later

    def _admit(self, item: _Job, batch: StepBatch, members: dict[Any, _Job]) -> None:
        self._left_queue(item)
        if item.cancelled.is_set():
            self._count(jobs_cancelled=1)
            return
        assert isinstance(item.fn, Stepped)
        try:
            members[batch.add(item.fn.start(self._emitter(item)))] = item
        except Exception as exc:  # noqa: BLE001 - this job fails, the batch goes on
            self._finish(item, None, exc)

    def _fail(self, item: _Job, exc: BaseException) -> None:
        self._release()  # only jobs that never started fail here (the worker stopped)
        item.post(exc)


__all__ = ["Emit", "JobCancelled", "JobOutcome", "QueueFullError", "SpeechWorker", "StepBatch",
           "Stepped"]
