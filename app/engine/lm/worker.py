"""One worker thread per loaded language model: admission queue + continuous batching.

The thread owns every MLX call for its model. Requests wait in a bounded queue; between
decode steps the worker moves waiting requests into mlx-lm's ``BatchGenerator`` (up to
``max_batch_size`` running sequences), drops cancelled ones, and pushes each new token's
text back to the request's event loop.

Over 400 lines on purpose: the thread's whole loop (admission, stepping, cancellation,
shutdown) reads best in one place; policies it applies live in their own modules
(``admission``, ``chunking``, ``phases``, ``prompt_scores``).
"""

from __future__ import annotations

import contextlib
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

from app.core.blas.governor import blas_governor
from app.core.threads import join_fully
from app.engine.base import EngineStoppedError, QueueFullError
from app.engine.lm.admission import AdmissionPolicy
from app.engine.lm.detokenizer import make_detokenizer
from app.engine.lm.grammar import GrammarFactory
from app.engine.lm.iteration_stats import TokenHistogram, step_tokens
from app.engine.lm.prefix_cache import build_prefix_cache
from app.engine.lm.prefix_config import PrefixCacheConfig
from app.engine.lm.processors import make_processors
from app.engine.lm.prompt_keeper import PromptKeeper
from app.engine.lm.sampling import make_request_sampler
from app.engine.lm.sequence import SequenceState
from app.engine.lm.speculative import SpeculativeBatchGenerator, SpeculativeStats
from app.engine.lm.types import Failed, GenerationRequest, PrefillProgress
from app.engine.memory import IdleRelease
from app.kernels.compile import optimize_model

log = logging.getLogger(__name__)

__all__ = ["EngineStoppedError", "ModelEngine", "QueueFullError"]

PREFILL_BATCH = 8  # prompts prefilled together in one pass
MAX_GATHER_S = 0.25  # longest an idle engine waits to gather a burst (see _gather_burst)
IDLE_WAKE_S = 1.0  # an idle engine wakes this often (stop checks, load samples)


def _vocab_size(loaded: Any) -> int:
    """Rows of the output layer (may exceed the tokenizer's vocabulary)."""
    config = getattr(loaded, "model_config", None) or {}
    if config.get("vocab_size"):
        return int(config["vocab_size"])
    return loaded.tokenizer_vocab_size


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    steps: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    max_running: int = 0
    iteration_tokens: TokenHistogram = field(default_factory=TokenHistogram)


class ModelEngine:
    """Continuous-batching generator for one model, driven by its own thread."""

    def __init__(
        self,
        load: Callable[[], Any],
        *,
        max_batch_size: int = 16,
        queue_depth: int = 256,
        queue_timeout_s: float = 120.0,
        prefill_step_size: int = 512,
        prefill_chunk_s: float = 0.0,
        admission: AdmissionPolicy | None = None,
        max_sequences_per_client: int = 0,
        admission_gap_s: float = 0.0,
        split_phases: bool = True,
        prefix_cache_bytes: int = 0,
        prefix_cache: PrefixCacheConfig | None = None,
        mlx_cache_limit: int | None = None,
        name: str = "model",
    ) -> None:
        self._load = load
        self.loaded: Any = None  # LoadedLanguageModel once the thread has loaded it
        self.model: Any = None
        self.grammars: GrammarFactory | None = None
        self.tokenizer: Any = None
        self.eos_token_ids: set[int] = set()
        self.max_batch_size = max_batch_size
        self.queue_depth = queue_depth
        self.queue_timeout_s = queue_timeout_s
        self.prefill_step_size = prefill_step_size
        self.prefill_chunk_s = prefill_chunk_s
        self.admission = admission or AdmissionPolicy.for_batch(max_batch_size)
        self.max_sequences_per_client = max_sequences_per_client
        self.admission_gap_s = admission_gap_s
        self.split_phases = split_phases
        self.name = name
        self.stats = EngineStats()
        self._blas = blas_governor()  # OpenBLAS threads: all cores while the machine is idle
        self.spec_stats = SpeculativeStats()  # survives generator replacement after a failure
        self._waiting: deque[GenerationRequest] = deque()
        self._active: dict[int, SequenceState] = {}
        # Built once the model is loaded (its budget depends on the model's KV size).
        self.prefix_cache_config = prefix_cache or PrefixCacheConfig(max_bytes=prefix_cache_bytes)
        self.prefix_cache: Any = None
        self._keeper: PromptKeeper | None = None
        self.mlx_cache_limit = mlx_cache_limit
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._generator: BatchGenerator | None = None
        self._release_idle = IdleRelease()  # memory back to the OS when the engine runs dry
        # Test-only fault injection: called for every generated token with the request and
        # its token count; an exception it raises fails that request alone.
        self.fault_hook: Callable[[GenerationRequest, int], None] | None = None

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
            join_fully(self._thread, timeout)

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
            self._check_client_cap(request)
            self._waiting.append(request)
            self.stats.waiting = len(self._waiting)
            self._cond.notify_all()
        log.debug("engine %s: request queued, %d waiting", self.name, len(self._waiting))

    def _check_client_cap(self, request: GenerationRequest) -> None:
        """A client (API key + X-House-ID) over its sequence cap is refused like a full
        queue. Lock held."""
        cap = self.max_sequences_per_client
        if not cap or not request.client:
            return
        mine = sum(1 for r in self._waiting if r.client == request.client and not r.cancelled)
        mine += sum(1 for s in self._active.values() if s.request.client == request.client)
        if mine >= cap:
            raise QueueFullError(
                f"client {request.client} has {mine} sequences queued or running on model "
                f"{self.name} (at most {cap})"
            )

    def cancel(self, request: GenerationRequest) -> None:
        """Mark a request cancelled; the worker drops it before its next step."""
        with self._cond:
            request.cancelled = True
            self._cond.notify_all()

    # ---- worker side -------------------------------------------------------
    @property
    def prefill_batch_size(self) -> int:
        """Prompts prefilled together in one pass (and the burst an idle engine gathers)."""
        return min(PREFILL_BATCH, self.max_batch_size)

    def _new_generator(self) -> BatchGenerator:
        return SpeculativeBatchGenerator(  # prompt-lookup drafts while one sequence runs
            self.model,
            stream=mx.default_stream(mx.default_device()),
            stop_tokens=[[t] for t in sorted(self.eos_token_ids)],
            completion_batch_size=self.max_batch_size,
            prefill_batch_size=self.prefill_batch_size,
            prefill_step_size=self.prefill_step_size,
            prefill_chunk_s=self.prefill_chunk_s,
            allow=self._may_speculate,
            stats=self.spec_stats,
            split_phases=self.split_phases,
        )

    def _may_speculate(self, uid: int) -> bool:
        seq = self._active.get(uid)
        return seq is None or seq.request.params.speculative

    def _run(self, ready: Future) -> None:
        try:
            loaded = self._load()
            self.loaded = loaded
            self.model, self.tokenizer = loaded.model, loaded.tokenizer
            log.info("engine %s: %s", self.name, optimize_model(self.model))
            self.eos_token_ids = set(loaded.eos_token_ids)
            self.grammars = GrammarFactory(
                self.tokenizer, _vocab_size(loaded), self.eos_token_ids
            )
            self._generator = self._new_generator()
            self.prefix_cache = build_prefix_cache(
                self.prefix_cache_config, self.model, self.name
            )
            if self.prefix_cache is not None:
                self._keeper = PromptKeeper(self.prefix_cache, self._active)
            if self.mlx_cache_limit is not None:
                # MLX keeps freed buffers for reuse, unbounded by default; under a steady
                # stream of differently sized batches and KV caches that pool only grows.
                mx.set_cache_limit(self.mlx_cache_limit)
        except BaseException as exc:  # noqa: BLE001 - reported to whoever awaits the load
            with self._cond:
                self._stopping = True
            ready.set_exception(exc)
            return
        ready.set_result(loaded)
        while True:
            if not self._active:
                self._release_idle(self.stats.steps)
                if self._blas is not None:
                    self._blas.rest(self, mx.synchronize)
            with self._cond:
                while not self._stopping and not self._waiting and not self._active:
                    self._cond.wait(timeout=IDLE_WAKE_S)
                    if self._blas is not None:
                        self._blas.observe()  # keeps the load judgement a second fresh
                if self._stopping:
                    break
                if not self._active:
                    self._gather_burst()
                admitted = self._take_admissible()
            with self._blas.computing(self) if self._blas else contextlib.nullcontext():
                if self._blas is not None:
                    self._blas.tick(self, mx.synchronize)
                self._admit_and_step(admitted)
        self._fail_all("server is shutting down", status=503, code="shutting_down")
        with self._cond:
            for request in self._waiting:
                request.push(Failed("server is shutting down", 503, "shutting_down"))
            self._waiting.clear()
        # The engine object may outlive its thread (a reference cycle, a late reader); the
        # model and its caches must not.
        self._close_generator()
        self.loaded = self.model = self.grammars = None
        if self.prefix_cache is not None:
            self.prefix_cache.close()  # to the disk tier, if there is one

    def _admit_and_step(self, admitted: list[GenerationRequest]) -> None:
        try:
            self._insert(admitted)
        except Exception as exc:  # noqa: BLE001 - these requests fail, the batch goes on
            log.exception("engine %s: admitting %d request(s) failed", self.name, len(admitted))
            self._fail_admitted(admitted, f"generation failed: {type(exc).__name__}")
        try:
            self._drop_cancelled()
            if self._active:
                self._step()
        except Exception as exc:  # noqa: BLE001 - one bad step must not kill the thread
            log.exception("engine %s step failed", self.name)
            self._fail_all(f"generation failed: {type(exc).__name__}")

    def _gather_burst(self) -> None:
        """Idle engine, first request(s) in: wait while more keep arriving (each within
        ``admission_gap_s`` of the last, at most ``MAX_GATHER_S`` in all) so that a burst of
        clients is prefilled in shared passes rather than the first one alone. Lock held."""
        deadline = time.monotonic() + MAX_GATHER_S
        while not self._stopping and 0 < len(self._waiting) < self.prefill_batch_size:
            remaining = min(self.admission_gap_s, deadline - time.monotonic())
            if remaining <= 0:
                return
            seen = len(self._waiting)
            self._cond.wait(remaining)
            if len(self._waiting) <= seen:
                return  # nothing new within the gap

    def _take_admissible(self) -> list[GenerationRequest]:
        """Pop the waiting requests the admission policy lets into the batch; expire the
        ones waiting too long."""
        now = time.monotonic()
        live: list[GenerationRequest] = []
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
            live.append(request)
        # no more than the next prefill pass takes: the generator prefills in insertion order
        pending = self._generator.prompts_pending() if self._generator is not None else 0
        taken = self.admission.select(live, (seq.request for seq in self._active.values()),
                                      at_most=max(0, self.prefill_batch_size - pending))
        if self._keeper is not None:  # one prefill for a prefix that several prompts share
            kept: list[GenerationRequest] = []
            for request in taken:
                if not self._keeper.must_wait(request, kept):
                    kept.append(request)
            taken = kept
        chosen = {id(r) for r in taken}
        self._waiting = deque(r for r in live if id(r) not in chosen)
        self.stats.waiting = len(self._waiting)
        return taken

    def _insert(self, requests: list[GenerationRequest]) -> None:
        if not requests:
            return
        assert self._generator is not None
        prompts, caches, known, stop_sets = [], [], [], []
        for request in requests:
            cache, cached = None, 0
            if self._keeper is not None and request.params.prompt_logprobs is None:
                cache, cached = self._keeper.lookup(request)
            prompts.append(request.prompt_tokens[cached:])
            caches.append(cache)
            known.append(request.prompt_tokens[:cached])
            params = request.params
            stop_ids = set(params.stop_token_ids)
            if not params.ignore_eos or params.grammar is not None:  # a complete grammar ends
                stop_ids |= self.eos_token_ids
            stop_sets.append(stop_ids)
        uids = self._generator.insert(
            prompts,
            max_tokens=[max(1, r.params.max_tokens) for r in requests],  # 0: ends at prefill
            caches=caches,
            all_tokens=known,
            samplers=[make_request_sampler(r.params) for r in requests],
            logits_processors=[
                self._processors(r, stops) for r, stops in zip(requests, stop_sets, strict=True)
            ],
            stop_sequences=[StopSequences([[t] for t in sorted(s)]) for s in stop_sets],
        )
        now = time.monotonic()
        for uid, request, stops, prefix in zip(uids, requests, stop_sets, known, strict=True):
            request.admitted_at = now
            if request.params.prompt_logprobs is not None:
                self._generator.prompt_scores.watch(uid, request.params.prompt_logprobs)
            if self._keeper is not None:
                self._keeper.admitted(uid, request, len(prefix))
            self._active[uid] = SequenceState(
                request=request,
                detokenizer=make_detokenizer(self.tokenizer),
                stop_ids=stops,
                cached_tokens=len(prefix),
            )
            self.stats.prompt_tokens += len(request.prompt_tokens)
        self.stats.running = len(self._active)
        self.stats.max_running = max(self.stats.max_running, self.stats.running)

    def _processors(self, request: GenerationRequest, stop_ids: set[int]) -> list:
        processors = make_processors(request.params, len(request.prompt_tokens), stop_ids)
        if request.params.grammar is not None:  # last, so its mask is final
            processors.append(self.grammars.constraint(request.params, stop_ids))
        return processors

    def _drop_cancelled(self) -> None:
        gone = [uid for uid, seq in self._active.items() if seq.request.cancelled]
        if gone:
            self._remove(gone)
            for uid in gone:
                del self._active[uid]
            self.stats.running = len(self._active)

    def _remove(self, uids: list[int]) -> None:
        """Take sequences out of the batch, keeping their KV caches for later prefixes."""
        assert self._generator is not None
        keep = self._keeper is not None
        caches = self._generator.remove(uids, return_prompt_caches=keep)
        if keep:
            for uid, (cache, tokens) in caches.items():
                self._keeper.finished(uid, tokens, cache)

    def _step(self) -> None:
        assert self._generator is not None
        started, tokens_before = time.perf_counter(), step_tokens(self._generator)
        prompt_responses, generation_responses = self._generator.next()
        self.stats.steps += 1
        self.stats.iteration_tokens.observe(step_tokens(self._generator) - tokens_before)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "engine %s step %d: %.0f ms, %d running, %d tokens out, %d prompts in progress",
                self.name, self.stats.steps, (time.perf_counter() - started) * 1e3,
                len(self._active), len(generation_responses), len(prompt_responses),
            )
        if self._keeper is not None:
            self._keeper.on_prompt_progress(self._generator, prompt_responses)
        ended: list[int] = []
        for response in prompt_responses:
            seq = self._active.get(response.uid)
            if seq is None:
                continue
            if not response.end_of_prompt:
                seq.request.push(PrefillProgress(*response.progress))
            elif seq.prompt_done(self._generator.prompt_scores.take(response.uid)):
                ended.append(response.uid)  # max_tokens 0: the prompt was all it wanted
                self._active.pop(response.uid)
        finished: list[tuple[int, list[int], Any]] = []
        for response in generation_responses:
            seq = self._active.get(response.uid)
            if seq is None:
                continue
            self.stats.generated_tokens += 1
            try:
                if seq.request.cancelled:
                    reason: str | None = "cancelled"
                else:
                    if self.fault_hook is not None:
                        self.fault_hook(seq.request, seq.completion_tokens + 1)
                    row = response.logprobs if seq.request.params.logprobs is not None else None
                    reason = seq.on_token(response.token, row, response.finish_reason,
                                          self.stats.steps)
            except Exception as exc:  # noqa: BLE001 - isolate a per-request failure
                log.exception("engine %s: request %s failed", self.name, seq.request.request_id)
                seq.request.push(Failed(f"generation failed: {type(exc).__name__}: {exc}"))
                reason = "error"
            if reason is None:
                continue
            if response.finish_reason is None:  # we ended it (stop string, error, cancel)
                ended.append(response.uid)
            elif self._keeper is not None and response.prompt_cache is not None:
                finished.append((response.uid, response.all_tokens, response.prompt_cache))
            self._active.pop(response.uid, None)
        # Stored only once every row's token is out: storing evaluates the cache, and with
        # eager tokens that runs the batch's next pass, which would hold back the rows after it.
        for uid, tokens, cache in finished:
            self._keeper.finished(uid, tokens, cache)
        if ended:
            self._remove(ended)
        self.stats.running = len(self._active)

    def _fail_admitted(self, requests: list[GenerationRequest], message: str) -> None:
        """Requests whose insertion failed: drop whatever part of them got in, tell them."""
        failed = {id(r) for r in requests}
        uids = [uid for uid, seq in self._active.items() if id(seq.request) in failed]
        try:
            if uids and self._generator is not None:
                self._generator.remove(uids)
        except Exception:  # noqa: BLE001 - the batch is in an unknown state: start afresh
            log.exception("engine %s: could not remove failed requests", self.name)
            self._fail_all(message)
        for uid in uids:
            self._active.pop(uid, None)
        for request in requests:
            request.push(Failed(message))
        self.stats.running = len(self._active)

    def _fail_all(self, message: str, status: int = 500, code: str = "internal_error") -> None:
        for seq in self._active.values():
            seq.request.push(Failed(message, status, code))
        self._active.clear()
        self.stats.running = 0
        if not self._stopping:
            self._close_generator()
            self._generator = self._new_generator()

    def _close_generator(self) -> None:
        """Drop the generator; ``close`` gives back the wired-memory limit it set on Metal."""
        generator, self._generator = self._generator, None
        if generator is not None:
            try:
                generator.close()
            except Exception:  # noqa: BLE001 - a broken generator must not block its successor
                log.exception("engine %s: closing the generator failed", self.name)
