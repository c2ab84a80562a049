"""What every model worker shares: one daemon thread that owns all MLX calls of a model,
fed by a queue that callers on the event loop fill, with answers sent back to that loop.

:class:`QueueWorker` runs an optional warm-up, then hands each queued item to
:meth:`QueueWorker._serve` (which may gather more with :meth:`QueueWorker._take`), and
stops after the items queued before :meth:`QueueWorker.stop`. The embedding batcher is
one; speech models' workers are meant to be others. The language-model engine keeps its
own condition-variable loop (continuous batching needs to see its waiting list), and
shares the errors below.

Every queue is bounded: :meth:`QueueWorker._submit` counts a request against
``queue_depth`` (raising :class:`QueueFullError`, a 429 with ``Retry-After``, when it is
reached) and the worker says when it stops counting with :meth:`QueueWorker._release`: the
embedding batcher once the request is answered, a speech worker once it starts the job.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from app.core.threads import join_fully

logger = logging.getLogger(__name__)

STOP = object()  # queue marker: serve what came before it, then end the thread


class QueueFullError(RuntimeError):
    """The model's admission queue is at its configured depth."""


class EngineStoppedError(RuntimeError):
    """The engine no longer accepts work (model unloading or server draining)."""


def deliver(loop: asyncio.AbstractEventLoop, future: asyncio.Future, value: Any,
            *, error: bool = False) -> None:
    """Resolve ``future`` on its own event loop from the worker thread (once)."""

    def settle() -> None:
        if future.done():
            return
        if error:
            future.set_exception(value)
        else:
            future.set_result(value)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # event loop already closed; nobody is waiting
        pass


class QueueWorker:
    """A worker thread serving a queue; subclasses define :meth:`_serve` and :meth:`_fail`."""

    thread_suffix = "worker"
    held_what = "requests queued or in progress"  # what ``held`` counts, for QueueFullError

    def __init__(self, *, name: str, queue_depth: int,
                 warmup: Callable[[], object] | None = None) -> None:
        self.name = name
        self.queue_depth = queue_depth
        self._warmup = warmup
        self.ready = threading.Event()  # set once warm-up has finished (or failed)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self._stopping = False
        self.stats: Any = None  # a subclass's counters (a dataclass of ints)
        self._stats_lock = threading.Lock()  # guards ``stats``, ``held`` (and subclasses' tallies)
        self.held = 0  # requests counted against ``queue_depth`` (see _submit and _release)

    # -- lifecycle (any thread) -------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        with self._lifecycle:
            old = self._thread
            if old is not None and old.is_alive() and not self._stopping:
                return
        if old is not None:
            old.join()  # a stop() that timed out: let that worker finish first
        with self._lifecycle:
            if self._thread is not old:  # another start() won the race
                return
            self._stopping = False
            self.ready.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"{self.name}-{self.thread_suffix}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the worker after the work already queued; later submissions fail."""
        with self._lifecycle:
            thread = self._thread
            if thread is None:
                return
            self._stopping = True
            self._queue.put(STOP)
        join_fully(thread, timeout)
        if thread.is_alive():  # still serving; it exits at the stop marker
            logger.warning("%s %s did not stop within %ss", self.name, self.thread_suffix,
                           timeout)
            return
        with self._lifecycle:
            if self._thread is thread:
                self._thread = None
        self._fail_queued(RuntimeError(f"{self.name} {self.thread_suffix} stopped"))

    def _submit(self, item: Any) -> None:
        """Queue ``item`` as one more request held against ``queue_depth``: raises
        :class:`QueueFullError` when that many are held, :class:`EngineStoppedError` when the
        worker is not running (then it is not held)."""
        with self._stats_lock:
            if self.held >= self.queue_depth:
                raise QueueFullError(
                    f"model {self.name} has {self.held} {self.held_what} "
                    f"(queue depth {self.queue_depth})"
                )
            self.held += 1
        try:
            with self._lifecycle:  # so that no item lands behind the stop marker
                if not self.running:
                    raise EngineStoppedError(f"{self.name} {self.thread_suffix} is not running")
                self._queue.put(item)
        except BaseException:
            self._release()
            raise

    def _release(self, *_: object) -> None:
        """One request submitted earlier no longer counts against ``queue_depth`` (any
        thread; extra arguments let it be a future's done callback)."""
        with self._stats_lock:
            self.held -= 1

    # -- worker thread ----------------------------------------------------------------
    def _run(self) -> None:
        if self._warmup is not None:
            started = time.perf_counter()
            try:
                self._warmup()
                logger.info("%s warm-up took %.2fs", self.name, time.perf_counter() - started)
            except Exception:
                logger.exception("%s %s: warm-up failed (serving anyway)", self.name,
                                 self.thread_suffix)
        self.ready.set()
        while True:
            item = self._queue.get()
            if item is STOP or self._serve(item) is STOP:
                return

    def _take(self, timeout: float) -> Any:
        """The next queued item within ``timeout`` seconds (0: only what is queued now),
        :data:`STOP`, or None when nothing came."""
        try:
            if timeout > 0:
                return self._queue.get(timeout=timeout)
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def _serve(self, item: Any) -> object | None:
        """Serve ``item`` (and whatever it gathers); return :data:`STOP` if it took the
        stop marker from the queue."""
        raise NotImplementedError

    def _fail(self, item: Any, exc: BaseException) -> None:
        """Answer ``item`` with ``exc`` (it will not be served)."""
        raise NotImplementedError

    def _count(self, **deltas: int) -> None:
        """Add ``deltas`` to the named counters of ``stats``, under the stats lock."""
        with self._stats_lock:
            for key, delta in deltas.items():
                setattr(self.stats, key, getattr(self.stats, key) + delta)

    def _fail_queued(self, exc: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not STOP:
                self._fail(item, exc)
