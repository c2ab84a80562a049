"""Micro-batching for embedding requests.

One :class:`EmbeddingBatcher` owns one worker thread that performs every MLX call for its
model.  Coroutines call :meth:`EmbeddingBatcher.embed`; the worker gathers requests that
arrive within ``max_wait_ms`` of the first one (or until ``max_batch_size`` sequences are
queued), sorts all their sequences by length, and runs one padded forward pass per
sub-batch.  Results go back to the event loop with ``loop.call_soon_threadsafe``.

The window closes early once as many requests are gathered as the previous pass served
plus those that were already queued when its forward pass ended, before any result went
out (the clients that are likely to come back; counted later, a lone client's next
request would look like company).  So a lone client's request runs as soon as it
arrives (waiting ``max_wait_ms`` for company that never comes cost a one-sentence
request ~20% of its latency), and N
clients that each wait for their answer are gathered into one pass without waiting out
the window.

A pass holds at most ``max_batch_size`` sequences and ``max_pass_tokens`` padded tokens, so a
request larger than that is served a slice at a time; between its slices, requests that arrived
meanwhile run first, each in a pass of its own when it can finish there (the rule is in
:mod:`app.engine.embedding.slicing`), so a one-word request waits for the rest of one slice,
not for a 128-document request. A request whose client has left (its future cancelled) is
dropped before its next slice. At most ``queue_depth`` requests are queued or in progress;
beyond that :meth:`EmbeddingBatcher.embed` raises :class:`~app.engine.base.QueueFullError`
(a 429 with ``Retry-After``).

A failing forward pass that mixed several requests is retried request by request, so an
error only fails the requests that actually cause it; the worker keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from app.core.blas.governor import blas_governor
from app.engine.base import STOP, QueueWorker, deliver
from app.engine.embedding.slicing import EmbedRequest, plan_pass

logger = logging.getLogger(__name__)

ForwardFn = Callable[[list[list[int]]], Sequence[Sequence[float]]]
ValidateFn = Callable[[list[list[int]]], None]


@dataclass
class EmbeddingBatcherStats:
    forward_passes: int = 0
    failed_forward_passes: int = 0
    requests_served: int = 0
    requests_failed: int = 0
    requests_cancelled: int = 0
    sequences_embedded: int = 0
    max_requests_in_pass: int = 0
    max_sequences_in_pass: int = 0


class EmbeddingBatcher(QueueWorker):
    """Gathers concurrent embedding requests into padded forward passes on one thread."""

    thread_suffix = "batcher"

    def __init__(
        self,
        forward: ForwardFn,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_pass_tokens: int = 2048,
        queue_depth: int = 64,
        validate: ValidateFn | None = None,
        warmup: Callable[[], object] | None = None,
        name: str = "embeddings",
    ) -> None:
        """``forward`` maps a list of token-id sequences to one vector per sequence and is
        only ever called from the worker thread.  ``validate`` (optional) runs on the
        caller's side before queueing and should raise ``ValueError`` for bad input.
        ``warmup`` (optional) runs first on the worker thread; requests wait for it."""
        if max_batch_size < 1 or max_pass_tokens < 1:
            raise ValueError("max_batch_size and max_pass_tokens must be >= 1")
        super().__init__(name=name, queue_depth=queue_depth, warmup=warmup)
        self._forward = forward
        self._validate = validate
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.max_pass_tokens = max_pass_tokens
        self._backlog: deque[EmbedRequest] = deque()  # worker thread only: requests being served
        self.stats = EmbeddingBatcherStats()
        self._expected_requests = 1  # worker thread only: see the module docstring
        self._queued_at_results = 0  # worker thread only: queue size when results went out
        self._blas = blas_governor()  # told when a pass runs (its two streams fill the cores)

    @classmethod
    def for_model(cls, model: Any, **kwargs: Any) -> EmbeddingBatcher:
        """Batcher for a ``LoadedEmbeddingModel`` (``embed_token_ids``, validation, warm-up)."""
        kwargs.setdefault("validate", model.validate_token_ids)
        kwargs.setdefault("warmup", model.warmup)
        return cls(model.embed_token_ids, **kwargs)

    def stats_snapshot(self) -> dict[str, int]:
        with self._stats_lock:
            return asdict(self.stats)

    # -- asyncio side --------------------------------------------------------------------
    async def embed(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """Embed sequences of token ids; one vector per sequence, in input order."""
        batch = [list(ids) for ids in token_ids]
        if not batch:
            return []
        if self._validate is not None:
            self._validate(batch)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[list[float]]] = loop.create_future()
        self._submit(EmbedRequest(batch, future, loop))
        future.add_done_callback(self._release)  # answered, failed or abandoned
        return await future

    # -- worker thread -------------------------------------------------------------------
    def _serve(self, item: EmbedRequest) -> object | None:
        """Gather requests into a pass (see the module docstring), then serve them pass by
        pass, letting newly queued requests into each next pass."""
        pending: list[EmbedRequest] = [item]
        queued = len(item.token_ids)
        stop_after = False
        deadline = time.monotonic() + self.max_wait_s
        while queued < self.max_batch_size:
            if len(pending) >= self._expected_requests:
                remaining = 0.0  # take only what is already queued
            else:
                remaining = deadline - time.monotonic()
            item = self._take(remaining)
            if item is None:
                break
            if item is STOP:
                stop_after = True
                break
            pending.append(item)
            queued += len(item.token_ids)
        self._backlog.extend(pending)
        while self._backlog:
            batch = self._next_pass()
            try:
                if batch:
                    self._run_pass(batch, retry=True)
            except Exception as exc:  # never let the worker die
                logger.exception("%s batcher: unexpected error", self.name)
                for req in {id(r): r for r, _ in batch}.values():
                    self._fail(req, exc)
            while not stop_after:  # arrivals join the next pass
                item = self._take(0)
                if item is None:
                    break
                if item is STOP:
                    stop_after = True
                else:
                    self._backlog.append(item)
        if stop_after:
            return STOP
        self._expected_requests = max(1, len(pending) + self._queued_at_results)
        return None

    def _next_pass(self) -> list[tuple[EmbedRequest, int]]:
        """The next pass (:func:`~app.engine.embedding.slicing.plan_pass`); drops requests
        that were cancelled, failed or fully handed to passes."""
        live: list[EmbedRequest] = []
        for req in self._backlog:
            if req.future.cancelled():  # racy read is fine: only skips wasted work
                self._count(requests_cancelled=1)
            elif req.error is None and req.order:
                live.append(req)
        items = plan_pass(live, self.max_batch_size, self.max_pass_tokens)
        self._backlog = deque(req for req in live if req.order)  # still in arrival order
        items.sort(key=lambda it: len(it[0].token_ids[it[1]]))
        return items

    def _forward_governed(self, batch: list[list[int]]) -> Sequence[Any]:
        """The forward pass, telling the BLAS governor about it: a one-sequence pass runs on
        one MLX stream (so may get every core's BLAS threads), a larger one on two."""
        if self._blas is None:
            return self._forward(batch)
        with self._blas.computing(self, 1 if len(batch) == 1 else 2):
            self._blas.tick(self, lambda: None)  # our forward passes return evaluated
            return self._forward(batch)

    def _run_pass(self, items: list[tuple[EmbedRequest, int]], *, retry: bool) -> None:
        items = [(req, i) for req, i in items if req.error is None]
        if not items:
            return
        requests = list(dict.fromkeys(req for req, _ in items))
        try:
            vectors = self._forward_governed([req.token_ids[i] for req, i in items])
            if len(vectors) != len(items):
                raise RuntimeError(f"forward returned {len(vectors)} vectors for {len(items)}")
        except Exception as exc:  # isolate failures per request
            self._count(failed_forward_passes=1)
            if retry and len(requests) > 1:
                # Find the culprit(s): rerun each request on its own.
                for req in requests:
                    self._run_pass([it for it in items if it[0] is req], retry=False)
            else:
                for req in requests:
                    self._fail(req, exc)
            return
        self._queued_at_results = self._queue.qsize()  # before our clients can send again
        with self._stats_lock:
            s = self.stats
            s.forward_passes += 1
            s.sequences_embedded += len(items)
            s.max_requests_in_pass = max(s.max_requests_in_pass, len(requests))
            s.max_sequences_in_pass = max(s.max_sequences_in_pass, len(items))
        for (req, i), vec in zip(items, vectors, strict=True):
            req.results[i] = vec if isinstance(vec, list) else list(vec)
            req.remaining -= 1
            if req.remaining == 0:
                self._count(requests_served=1)
                deliver(req.loop, req.future, req.results)

    def _fail(self, req: EmbedRequest, exc: BaseException) -> None:
        if req.error is not None:
            return
        req.error = exc
        self._count(requests_failed=1)
        deliver(req.loop, req.future, exc, error=True)
