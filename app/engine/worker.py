"""One worker thread per loaded language model: admission queue + continuous batching.

The thread owns every MLX call for its model. Requests wait in a bounded queue; between
decode steps the worker moves waiting requests into mlx-lm's ``BatchGenerator`` (up to
``max_batch_size`` running sequences), drops cancelled ones, and pushes each new token's
text back to the request's event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, StopSequences

from app.engine.sampling import make_request_processors, make_request_sampler
from app.engine.stops import StopStringMatcher
from app.engine.types import (
    Failed,
    Finished,
    GenerationRequest,
    PrefillProgress,
    TextDelta,
)

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The model's admission queue is at its configured depth."""


class EngineStoppedError(RuntimeError):
    """The engine no longer accepts work (model unloading or server draining)."""


@dataclass
class _Sequence:
    request: GenerationRequest
    detokenizer: object
    stops: StopStringMatcher
    completion_tokens: int = 0
    started_at: float = field(default_factory=time.monotonic)


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    steps: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    max_running: int = 0


class ModelEngine:
    """Continuous-batching generator for one model, driven by its own thread."""

    def __init__(
        self,
        load: Callable[[], Any],
        *,
        max_batch_size: int = 16,
        queue_depth: int = 256,
        queue_timeout_s: float = 600.0,
        prefill_step_size: int = 512,
        name: str = "model",
    ) -> None:
        self._load = load
        self.loaded: Any = None  # LoadedLanguageModel once the thread has loaded it
        self.model: Any = None
        self.tokenizer: Any = None
        self.eos_token_ids: set[int] = set()
        self.max_batch_size = max_batch_size
        self.queue_depth = queue_depth
        self.queue_timeout_s = queue_timeout_s
        self.prefill_step_size = prefill_step_size
        self.name = name
        self.stats = EngineStats()
        self._waiting: deque[GenerationRequest] = deque()
        self._active: dict[int, _Sequence] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._generator: BatchGenerator | None = None

    # ---- event-loop side -------------------------------------------------
    def start(self) -> Future:
        """Start the thread; it loads the model itself (MLX streams are per thread).

        The returned future resolves to the loaded model, or to the load error.
        """
        ready: Future = Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"engine-{self.name}", daemon=True
        )
        self._thread.start()
        return ready

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request, or raise at once when the queue is full."""
        with self._cond:
            if self._stopping:
                raise EngineStoppedError(f"model {self.name} is not accepting requests")
            if len(self._waiting) >= self.queue_depth:
                raise QueueFullError(
                    f"model {self.name} has {len(self._waiting)} requests waiting "
                    f"(queue depth {self.queue_depth})"
                )
            self._waiting.append(request)
            self.stats.waiting = len(self._waiting)
            self._cond.notify_all()

    def cancel(self, request: GenerationRequest) -> None:
        """Mark a request cancelled; the worker drops it before its next step."""
        with self._cond:
            request.cancelled = True
            self._cond.notify_all()

    # ---- worker side -------------------------------------------------------
    def _new_generator(self) -> BatchGenerator:
        return BatchGenerator(
            self.model,
            stream=mx.default_stream(mx.default_device()),
            stop_tokens=[[t] for t in sorted(self.eos_token_ids)],
            completion_batch_size=self.max_batch_size,
            prefill_batch_size=min(8, self.max_batch_size),
            prefill_step_size=self.prefill_step_size,
        )

    def _run(self, ready: Future) -> None:
        try:
            loaded = self._load()
            self.loaded = loaded
            self.model, self.tokenizer = loaded.model, loaded.tokenizer
            self.eos_token_ids = set(loaded.eos_token_ids)
            self._generator = self._new_generator()
        except BaseException as exc:  # noqa: BLE001 - reported to whoever awaits the load
            with self._cond:
                self._stopping = True
            ready.set_exception(exc)
            return
        ready.set_result(loaded)
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._active:
                    self._cond.wait(timeout=1.0)
                if self._stopping:
                    break
                admitted = self._take_admissible()
            try:
                self._insert(admitted)
                self._drop_cancelled()
                if self._active:
                    self._step()
            except Exception as exc:  # noqa: BLE001 - one bad step must not kill the thread
                log.exception("engine %s step failed", self.name)
                self._fail_all(f"generation failed: {type(exc).__name__}")
        self._fail_all("server is shutting down", status=503, code="shutting_down")
        with self._cond:
            for request in self._waiting:
                request.push(Failed("server is shutting down", 503, "shutting_down"))
            self._waiting.clear()

    def _take_admissible(self) -> list[GenerationRequest]:
        """Pop waiting requests that fit in the batch; expire the ones waiting too long."""
        now = time.monotonic()
        taken: list[GenerationRequest] = []
        kept: deque[GenerationRequest] = deque()
        free = self.max_batch_size - len(self._active)
        for request in self._waiting:
            if request.cancelled:
                continue
            if now - request.enqueued_at > self.queue_timeout_s:
                request.push(
                    Failed(
                        f"request waited more than {self.queue_timeout_s:g}s in the queue",
                        503,
                        "queue_timeout",
                    )
                )
                continue
            if len(taken) < free:
                taken.append(request)
            else:
                kept.append(request)
        self._waiting = kept
        self.stats.waiting = len(kept)
        return taken

    def _insert(self, requests: list[GenerationRequest]) -> None:
        if not requests:
            return
        assert self._generator is not None
        uids = self._generator.insert(
            [r.prompt_tokens for r in requests],
            max_tokens=[r.params.max_tokens for r in requests],
            samplers=[make_request_sampler(r.params) for r in requests],
            logits_processors=[make_request_processors(r.params) for r in requests],
            stop_sequences=[
                StopSequences([[t] for t in sorted(self.eos_token_ids)]) for _ in requests
            ],
        )
        for uid, request in zip(uids, requests, strict=True):
            self._active[uid] = _Sequence(
                request=request,
                detokenizer=self.tokenizer.detokenizer,
                stops=StopStringMatcher(request.params.stop),
            )
            self.stats.prompt_tokens += len(request.prompt_tokens)
        self.stats.running = len(self._active)
        self.stats.max_running = max(self.stats.max_running, self.stats.running)

    def _drop_cancelled(self) -> None:
        gone = [uid for uid, seq in self._active.items() if seq.request.cancelled]
        if gone:
            assert self._generator is not None
            self._generator.remove(gone)
            for uid in gone:
                del self._active[uid]
            self.stats.running = len(self._active)

    def _step(self) -> None:
        assert self._generator is not None
        prompt_responses, generation_responses = self._generator.next()
        self.stats.steps += 1
        for response in prompt_responses:
            seq = self._active.get(response.uid)
            if seq is not None and not response.end_of_prompt:
                done, total = response.progress
                seq.request.push(PrefillProgress(done, total))
        finished: list[int] = []
        for response in generation_responses:
            seq = self._active.get(response.uid)
            if seq is None:
                continue
            try:
                reason = self._on_token(seq, response.token, response.finish_reason)
            except Exception as exc:  # noqa: BLE001 - isolate a per-request failure
                log.exception("engine %s: request %s failed", self.name, seq.request.request_id)
                seq.request.push(Failed(f"generation failed: {type(exc).__name__}"))
                reason = "error"
            if reason is not None:
                finished.append(response.uid)
                if response.finish_reason is None:  # we ended it (stop string, error)
                    self._generator.remove([response.uid])
        for uid in finished:
            self._active.pop(uid, None)
        self.stats.running = len(self._active)
        if not self._active:
            mx.clear_cache()

    def _on_token(self, seq: _Sequence, token: int, finish_reason: str | None) -> str | None:
        """Turn one generated token into events; return the finish reason if it ended."""
        seq.completion_tokens += 1
        self.stats.generated_tokens += 1
        if seq.request.cancelled:
            return "cancelled"
        detokenizer = seq.detokenizer
        if not (finish_reason == "stop" and token in self.eos_token_ids):
            detokenizer.add_token(token)  # an end-of-sequence token has no text
        segment = detokenizer.last_segment
        if finish_reason is not None:
            detokenizer.finalize()
            segment += detokenizer.last_segment
        text, hit = seq.stops.feed(segment)
        if finish_reason is not None and not hit:
            text += seq.stops.flush()
        if text:
            seq.request.push(TextDelta(text, token))
        if hit:
            return self._finish(seq, "stop")
        if finish_reason is not None:
            return self._finish(seq, finish_reason)
        return None

    def _finish(self, seq: _Sequence, reason: str) -> str:
        seq.request.push(
            Finished(
                finish_reason=reason,
                prompt_tokens=len(seq.request.prompt_tokens),
                completion_tokens=seq.completion_tokens,
            )
        )
        return reason

    def _fail_all(self, message: str, status: int = 500, code: str = "internal_error") -> None:
        for seq in self._active.values():
            seq.request.push(Failed(message, status, code))
        self._active.clear()
        self.stats.running = 0
        if not self._stopping:
            self._generator = self._new_generator()
