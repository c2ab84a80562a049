"""Model lifecycle: which registry models are loaded, loading or failed, and their engines.

Over 400 lines on purpose: one state machine per model (load, lease, evict, unload,
reload, back-off) is easier to check whole; residency rules, load failures and sources
live in their own modules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import Settings
from app.core import errors
from app.core.faults import fault_hook_from_env
from app.lifecycle.load_failures import LoadFailure, load_failed, next_failure, public_reason
from app.lifecycle.prefix_budget import prefix_cache_config
from app.lifecycle.registry import ModelRegistry, ModelSpec
from app.lifecycle.residency import (
    default_memory_budget,
    estimate_bytes,
    eviction_order,
    expired,
    files_size,
    keep_alive_of,
)
from app.models.gguf import is_gguf
from app.models.sources.resolve import is_cached, resolve_source
from app.models.tool_parser import set_tool_parser

log = logging.getLogger(__name__)


@dataclass
class ManagedModel:
    spec: ModelSpec
    state: str = "unloaded"  # unloaded | loading | loaded | failed
    error: str | None = None
    engine: Any = None  # ModelEngine (lm), EmbeddingBatcher (embedding), SpeechWorker
    loaded: Any = None  # LoadedLanguageModel / LoadedEmbeddingModel / LoadedWhisper...
    load_seconds: float | None = None
    last_used: float | None = None
    memory_bytes: int | None = None  # MLX active memory the load added
    leases: int = 0  # requests using the model (streams until their last chunk)
    removed: bool = False  # dropped from the registry; unloads once idle
    failure: LoadFailure | None = None  # the latest failed load (back-off), until one succeeds
    _load_task: asyncio.Future | None = None

    def metadata(self) -> dict[str, Any]:
        spec = self.spec
        meta: dict[str, Any] = {
            "type": spec.type,
            "source": spec.source,
            "family": spec.family,
            "quantization": spec.quantization,
            "context_length": spec.context_length,
            "capabilities": spec.capabilities,
            "aliases": spec.aliases,
            "limits": spec.limits.model_dump(),
            "state": self.state,
            "loaded": self.state == "loaded",
            "load_seconds": self.load_seconds,
            "last_used": self.last_used,
            "memory_bytes": self.memory_bytes,
            "in_flight": self.leases,
            "keep_alive": spec.keep_alive,
            "preload": spec.preload,
        }
        if spec.dimensions is not None:
            meta["dimensions"] = spec.dimensions
        if spec.voices:
            meta["voices"] = spec.voices
        if self.loaded is not None and getattr(self.loaded, "weight_dtype", None):
            meta["weight_dtype"] = self.loaded.weight_dtype
        if self.error:
            meta["error"] = self.error
        stats = getattr(self.engine, "stats_snapshot", None)
        if callable(stats):  # embedding micro-batcher: shows that batching happens
            meta["batching"] = stats()
        return meta


class ModelLease:
    """One request's hold on a model: while held, the model is neither unloaded nor evicted.
    Released exactly once, however many times :meth:`release` is called."""

    def __init__(self, manager: ModelManager, name: str, capability: str) -> None:
        self._manager = manager
        self._name = name
        self._capability = capability
        self.managed: ManagedModel | None = None
        self._released = False

    async def acquire(self) -> ManagedModel:
        self.managed = await self._manager.acquire(self._name, self._capability)
        return self.managed

    def release(self) -> None:
        if self.managed is not None and not self._released:
            self._released = True
            self._manager.release(self.managed)

    async def __aenter__(self) -> ManagedModel:
        return await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def model_files_cached(spec: ModelSpec, settings: Settings) -> bool | None:
    """Whether loading ``spec`` would find its files locally (None: cannot tell)."""
    base = settings.models_file.parent if settings.models_file else None
    return is_cached(spec.source, cache_dir=settings.cache_dir, base_dir=base,
                     file_sha256=spec.file_sha256)


def resolve_model_path(spec: ModelSpec, settings: Settings) -> Path:
    if spec.type == "stt":  # its converted folder (the source is only read to build it)
        from app.lifecycle.speech import whisper_folder

        return whisper_folder(spec, settings)
    base = settings.models_file.parent if settings.models_file else None
    return resolve_source(
        spec.source,
        model_id=spec.id,
        cache_dir=settings.cache_dir,
        offline=settings.offline,
        sha256=spec.sha256,
        base_dir=base,
        file_sha256=spec.file_sha256,
    )


def load_language_model(spec: ModelSpec, settings: Settings) -> Any:
    """Resolve and load an ``lm`` model (runs on the engine's own thread)."""
    path = resolve_model_path(spec, settings)
    started = time.perf_counter()
    if path.is_file() and (path.suffix == ".gguf" or is_gguf(path)):
        from app.models.gguf.loader import load_gguf_model

        loaded = load_gguf_model(path, weights=settings.weights_dtype, cache_dir=settings.cache_dir)
    elif path.is_dir() and (path / "config.json").exists():
        from app.models.mlx_dir import load_mlx_dir

        loaded = load_mlx_dir(path, weights=settings.weights_dtype)
    else:
        raise ValueError(f"model {spec.id!r}: {path} is neither a .gguf file nor a model directory")
    if spec.tool_parser is not None:
        set_tool_parser(loaded.tokenizer, spec.tool_parser)
    log.info(
        "loaded model %s from %s in %.2fs (weights %s)",
        spec.id,
        path,
        time.perf_counter() - started,
        loaded.weight_dtype,
    )
    return loaded


class ModelManager:
    """Loads models on demand, keeps them while used, unloads them when idle or evicted."""

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.models = {spec.id: ManagedModel(spec) for spec in registry}
        self.draining = False
        self.memory_budget = settings.memory_budget_bytes or default_memory_budget()
        self._load_lock = asyncio.Lock()  # one load at a time: memory is measured per load
        self._reaper: asyncio.Task | None = None

    # ---- lifecycle -----------------------------------------------------------
    def start_preloads(self) -> None:
        """Begin loading the preload models in the background (readiness waits for them)."""
        self._reaper = asyncio.ensure_future(self._reap_forever())
        if not self.settings.preload:
            return
        for managed in self.models.values():
            if managed.spec.preload:
                self._begin_load(managed)

    def ready(self) -> bool:
        """Every preload model is loaded now (an unloaded one makes the server not ready)."""
        if self.draining:
            return False
        return all(
            m.state == "loaded"
            for m in self.models.values()
            if m.spec.preload and self.settings.preload and not m.removed
        )

    async def wait_ready(self) -> None:
        tasks = [m._load_task for m in self.models.values() if m._load_task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for managed in list(self.models.values()):
            await self._unload(managed)

    # ---- request path --------------------------------------------------------
    async def acquire(self, name: str, capability: str) -> ManagedModel:
        """Find a model by id or alias, check its capability, make sure it is loaded, and
        lease it: the caller must :meth:`release` it when its response is complete
        (request paths go through :meth:`lease`, which releases exactly once)."""
        spec = self.registry.get(name)
        if spec is None:
            raise errors.model_not_found(name)
        if capability not in spec.capabilities:
            raise errors.model_not_capable(name, capability)
        if self.draining:
            raise errors.APIError(
                503, "The server is shutting down.", type="server_error", code="shutting_down"
            )
        managed = self.models[spec.id]
        managed.leases += 1  # from here on it cannot be evicted
        try:
            await self._ensure_loaded(managed)
        except BaseException:
            managed.leases -= 1
            raise
        managed.last_used = time.time()
        return managed

    def lease(self, name: str, capability: str) -> ModelLease:
        """A lease on a model: ``async with manager.lease(...) as managed`` for requests
        answered in one go, or :meth:`ModelLease.acquire` / :meth:`ModelLease.release` for
        responses that outlive the handler's call (streams)."""
        return ModelLease(self, name, capability)

    def release(self, managed: ManagedModel) -> None:
        managed.leases = max(0, managed.leases - 1)
        managed.last_used = time.time()
        if managed.leases == 0 and (
            managed.removed or keep_alive_of(managed, self.settings.keep_alive_s) == 0
        ):
            asyncio.ensure_future(self._unload(managed))

    async def _ensure_loaded(self, managed: ManagedModel, force: bool = False) -> None:
        """Load ``managed`` unless loaded; ``force``: even within a failure's back-off."""
        spec = managed.spec
        if managed.state == "loaded":
            return
        if managed.state == "loading" and spec.preload and managed.load_seconds is None:
            raise errors.model_loading(spec.id)
        backoff = self.settings.load_retry_backoff_s
        if managed.state == "failed" and managed.failure is not None and not force:
            wait = managed.failure.retry_in(backoff)
            if wait > 0:  # not tried again for every request
                raise load_failed(spec.id, managed.failure, wait)
        if managed.state in ("unloaded", "failed"):
            self._begin_load(managed)
        assert managed._load_task is not None
        await asyncio.shield(managed._load_task)
        if managed.state != "loaded":
            if managed.failure is None:  # the memory budget: retry as soon as room frees
                raise load_failed(spec.id, LoadFailure(managed.error or "", 0.0), 1.0)
            raise load_failed(spec.id, managed.failure, managed.failure.retry_in(backoff))

    # ---- admin -----------------------------------------------------------------
    async def load(self, name: str) -> ManagedModel:
        spec = self.registry.get(name)
        if spec is None:
            raise errors.model_not_found(name)
        managed = self.models[spec.id]
        await self._ensure_loaded(managed, force=True)  # an operator's load tries at once
        managed.last_used = time.time()
        return managed

    async def unload(self, name: str) -> ManagedModel:
        spec = self.registry.get(name)
        if spec is None:
            raise errors.model_not_found(name)
        managed = self.models[spec.id]
        if managed.leases:
            raise errors.APIError(
                409,
                f"The model {spec.id!r} has {managed.leases} request(s) in flight.",
                code="model_in_use",
            )
        await self._unload(managed)
        return managed

    async def reload(self, registry: ModelRegistry) -> dict[str, list[str]]:
        """Swap in a new registry: new models appear, removed ones go once idle, changed
        ones are unloaded when idle and load again with their new spec on next use."""
        old = self.models
        added, removed, changed = [], [], []
        models: dict[str, ManagedModel] = {}
        for spec in registry:
            current = old.get(spec.id)
            if current is None:
                models[spec.id] = ManagedModel(spec)
                added.append(spec.id)
            elif current.spec != spec:
                changed.append(spec.id)
                current.removed = True
                models[spec.id] = ManagedModel(spec)
                if current.leases == 0:
                    await self._unload(current)
            else:
                models[spec.id] = current
        for model_id, current in old.items():
            if model_id not in models:
                removed.append(model_id)
                current.removed = True
                if current.leases == 0:
                    await self._unload(current)
        self.registry, self.models = registry, models
        log.info("registry reloaded: added %s, removed %s, changed %s", added, removed, changed)
        return {"added": added, "removed": removed, "changed": changed}

    # ---- loading and unloading -------------------------------------------------
    def _begin_load(self, managed: ManagedModel) -> None:
        managed.state = "loading"
        managed.error = None
        managed._load_task = asyncio.ensure_future(self._load(managed))

    async def _load(self, managed: ManagedModel) -> None:
        async with self._load_lock:
            started = time.perf_counter()
            try:
                await self._make_room(managed)
                before = await asyncio.to_thread(_active_memory)
                if managed.spec.type == "lm":
                    engine, loaded = await self._start_language_model(managed.spec)
                elif managed.spec.type in ("stt", "tts"):
                    engine, loaded = await self._start_speech_model(managed.spec)
                else:
                    engine, loaded = await self._start_embedding_model(managed.spec)
                after = await asyncio.to_thread(_active_memory)
            except Exception as exc:  # noqa: BLE001 - logged whole; clients get it without paths
                managed.state = "failed"
                # the memory budget depends on other models' use: no back-off for it
                transient = isinstance(exc, MemoryError)
                managed.failure = None if transient else next_failure(managed.failure, exc)
                managed.error = public_reason(exc)
                log.error("model %s failed to load: %s", managed.spec.id, exc)
                return
            managed.failure = None
            managed.engine, managed.loaded = engine, loaded
            if managed.spec.type == "lm":
                managed.spec.adopt_context_length(getattr(loaded, "context_length", None))
            managed.memory_bytes = max(0, after - before) or managed.memory_bytes
            managed.load_seconds = round(time.perf_counter() - started, 3)
            managed.last_used = time.time()
            managed.state = "loaded"
            log.info(
                "model %s loaded in %.2fs, %.1f MiB", managed.spec.id, managed.load_seconds,
                (managed.memory_bytes or 0) / 2**20,
            )

    async def _make_room(self, managed: ManagedModel) -> None:
        """Unload idle models (least recently used first) until the new one fits."""
        try:
            path = await asyncio.to_thread(resolve_model_path, managed.spec, self.settings)
        except Exception:  # noqa: BLE001 - the load itself reports source problems
            return
        need = estimate_bytes(managed, await asyncio.to_thread(files_size, path))
        in_use = sum(m.memory_bytes or 0 for m in self.models.values() if m.state == "loaded")
        for victim in eviction_order(self.models.values(), exclude=managed):
            if in_use + need <= self.memory_budget:
                break
            log.info("evicting idle model %s to make room for %s", victim.spec.id, managed.spec.id)
            in_use -= victim.memory_bytes or 0
            await self._unload(victim)
        if in_use + need > self.memory_budget:
            raise MemoryError(
                f"needs ~{need / 2**20:.0f} MiB but only "
                f"{max(0, self.memory_budget - in_use) / 2**20:.0f} MiB of the "
                f"{self.memory_budget / 2**20:.0f} MiB budget is free (busy models are kept)"
            )

    async def _unload(self, managed: ManagedModel) -> None:
        if managed.leases or managed.state != "loaded" or managed.engine is None:
            return
        held = [managed.engine]
        managed.engine, managed.loaded = None, None
        managed.state = "unloaded"
        await asyncio.to_thread(_stop_and_release, held)
        log.info("model %s unloaded", managed.spec.id)

    async def _reap_forever(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            for managed in expired(self.models.values(), self.settings.keep_alive_s):
                await self._unload(managed)


    async def _start_language_model(self, spec: ModelSpec) -> tuple[Any, Any]:
        from app.engine.lm.admission import AdmissionPolicy
        from app.engine.lm.worker import ModelEngine

        s = self.settings
        engine = ModelEngine(
            lambda: load_language_model(spec, s),
            max_batch_size=s.max_batch_size,
            queue_depth=s.queue_depth,
            queue_timeout_s=s.queue_timeout_s,
            prefill_step_size=s.prefill_step_size,
            prefill_chunk_s=s.prefill_chunk_ms / 1000.0,
            admission=AdmissionPolicy.for_batch(
                s.max_batch_size, s.max_running_per_request, s.reserved_batch_slots
            ),
            max_sequences_per_client=s.max_sequences_per_client,
            admission_gap_s=s.admission_gap_ms / 1000.0,
            split_phases=s.split_phases,
            prefix_cache=prefix_cache_config(spec, s, self.memory_budget),
            mlx_cache_limit=s.mlx_cache_limit_bytes,
            name=spec.id,
        )
        engine.fault_hook = fault_hook_from_env()  # TEST-ONLY; None unless its env var is set
        loaded = await asyncio.wrap_future(engine.start())
        return engine, loaded

    async def _start_embedding_model(self, spec: ModelSpec) -> tuple[Any, Any]:
        from app.engine.embedding.batcher import EmbeddingBatcher
        from app.models.sentence.embedding import load_embedding_model

        def load() -> Any:
            path = resolve_model_path(spec, self.settings)
            loaded = load_embedding_model(path)
            # The registry's context length rules (sentence-transformers' max_seq_length only
            # says where *it* truncates); the position table is the hard limit.
            positions = loaded.model.config.max_position_embeddings
            spec.adopt_context_length(positions)
            loaded.max_length = min(spec.context_length, positions)
            return loaded

        loaded = await asyncio.to_thread(load)
        batcher = EmbeddingBatcher.for_model(
            loaded,
            max_batch_size=self.settings.embedding_batch_size,
            max_wait_ms=self.settings.embedding_batch_wait_ms,
            max_pass_tokens=self.settings.embedding_pass_tokens,
            queue_depth=self.settings.embedding_queue_depth,
            name=spec.id,
        )
        batcher.start()
        await asyncio.to_thread(batcher.ready.wait)
        log.info("loaded embedding model %s (%d dimensions)", spec.id, loaded.dimensions)
        return batcher, loaded

    async def _start_speech_model(self, spec: ModelSpec) -> tuple[Any, Any]:
        from app.engine.speech.worker import SpeechWorker
        from app.lifecycle.speech import load_speech_model

        loaded = await asyncio.to_thread(load_speech_model, spec, self.settings)
        worker = SpeechWorker(name=spec.id, queue_depth=self.settings.queue_depth,
                              warmup=loaded.warmup)
        worker.start()
        await asyncio.to_thread(worker.ready.wait)
        log.info("loaded %s model %s (%s)", spec.type, spec.id, loaded.weight_dtype)
        return worker, loaded


def _active_memory() -> int:
    import mlx.core as mx

    return int(mx.get_active_memory())


def _stop_and_release(held: list[Any]) -> None:
    """Stop the engine in ``held`` and give its memory back, in one executor call.

    The engine comes in a list that is emptied here, so nothing this call was handed still
    reaches it when ``gc.collect`` runs: with the stop and the collection as two calls, the
    executor thread that ran the stop could still hold it when the next call collected.
    """
    import gc

    from app.engine.memory import release_memory

    engine = held.pop()
    engine.stop()
    del engine
    gc.collect()
    release_memory()  # MLX's buffer pool, then free heap pages back to the OS (glibc)
