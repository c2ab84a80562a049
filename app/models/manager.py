"""Model lifecycle: which registry models are loaded, loading or failed, and their engines."""

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
from app.models.registry import ModelRegistry, ModelSpec
from app.models.sources import resolve_source

log = logging.getLogger(__name__)


@dataclass
class ManagedModel:
    spec: ModelSpec
    state: str = "unloaded"  # unloaded | loading | loaded | failed
    error: str | None = None
    engine: Any = None  # ModelEngine (lm) or EmbeddingBatcher (embedding)
    loaded: Any = None  # LoadedLanguageModel / LoadedEmbeddingModel
    load_seconds: float | None = None
    last_used: float | None = None
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
        }
        if spec.dimensions is not None:
            meta["dimensions"] = spec.dimensions
        if self.loaded is not None and getattr(self.loaded, "weight_dtype", None):
            meta["weight_dtype"] = self.loaded.weight_dtype
        if self.error:
            meta["error"] = self.error
        stats = getattr(self.engine, "stats_snapshot", None)
        if callable(stats):  # embedding micro-batcher: shows that batching happens
            meta["batching"] = stats()
        return meta


def resolve_model_path(spec: ModelSpec, settings: Settings) -> Path:
    base = settings.models_file.parent if settings.models_file else None
    return resolve_source(
        spec.source,
        model_id=spec.id,
        cache_dir=settings.cache_dir,
        offline=settings.offline,
        sha256=spec.sha256,
        base_dir=base,
    )


def load_language_model(spec: ModelSpec, settings: Settings) -> Any:
    """Resolve and load an ``lm`` model (runs on the engine's own thread)."""
    path = resolve_model_path(spec, settings)
    started = time.perf_counter()
    if path.is_file() and path.suffix == ".gguf":
        from app.models.gguf import load_gguf_model

        loaded = load_gguf_model(path, weights=settings.weights_dtype)
    elif path.is_dir() and (path / "config.json").exists():
        from app.models.mlx_dir import load_mlx_dir

        loaded = load_mlx_dir(path, weights=settings.weights_dtype)
    else:
        raise ValueError(f"model {spec.id!r}: {path} is neither a .gguf file nor a model directory")
    log.info(
        "loaded model %s from %s in %.2fs (weights %s)",
        spec.id,
        path,
        time.perf_counter() - started,
        loaded.weight_dtype,
    )
    return loaded


class ModelManager:
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.models = {spec.id: ManagedModel(spec) for spec in registry}
        self.draining = False

    # ---- lifecycle -----------------------------------------------------------
    def start_preloads(self) -> None:
        """Begin loading the preload models in the background (readiness waits for them)."""
        if not self.settings.preload:
            return
        for managed in self.models.values():
            if managed.spec.preload:
                self._begin_load(managed)

    def ready(self) -> bool:
        if self.draining:
            return False
        return all(
            m.state == "loaded"
            for m in self.models.values()
            if m.spec.preload and self.settings.preload
        )

    async def wait_ready(self) -> None:
        tasks = [m._load_task for m in self.models.values() if m._load_task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        for managed in self.models.values():
            if managed.engine is not None:
                await asyncio.to_thread(managed.engine.stop)
                managed.engine = None
                managed.state = "unloaded"

    # ---- request path --------------------------------------------------------
    async def acquire(self, name: str, capability: str) -> ManagedModel:
        """Find a model by id or alias, check its capability, and make sure it is loaded."""
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
        if managed.state == "loaded":
            managed.last_used = time.time()
            return managed
        if managed.state == "loading" and spec.preload:
            raise errors.model_loading(spec.id)
        if managed.state in ("unloaded", "failed"):
            self._begin_load(managed)
        assert managed._load_task is not None
        await asyncio.shield(managed._load_task)
        if managed.state != "loaded":
            raise errors.APIError(
                503,
                f"The model {spec.id!r} failed to load: {managed.error}",
                type="server_error",
                code="model_load_failed",
            )
        managed.last_used = time.time()
        return managed

    def _begin_load(self, managed: ManagedModel) -> None:
        managed.state = "loading"
        managed.error = None
        managed._load_task = asyncio.ensure_future(self._load(managed))

    async def _load(self, managed: ManagedModel) -> None:
        started = time.perf_counter()
        try:
            if managed.spec.type == "lm":
                engine, loaded = await self._start_language_model(managed.spec)
            else:
                engine, loaded = await self._start_embedding_model(managed.spec)
        except Exception as exc:  # noqa: BLE001 - the cause is shown to clients and logs
            managed.state = "failed"
            managed.error = str(exc) or type(exc).__name__
            log.error("model %s failed to load: %s", managed.spec.id, managed.error)
            return
        managed.engine, managed.loaded = engine, loaded
        managed.load_seconds = round(time.perf_counter() - started, 3)
        managed.state = "loaded"

    async def _start_language_model(self, spec: ModelSpec) -> tuple[Any, Any]:
        from app.engine.worker import ModelEngine

        s = self.settings
        engine = ModelEngine(
            lambda: load_language_model(spec, s),
            max_batch_size=s.max_batch_size,
            queue_depth=s.queue_depth,
            queue_timeout_s=s.queue_timeout_s,
            prefill_step_size=s.prefill_step_size,
            prefix_cache_bytes=s.prefix_cache_bytes,
            name=spec.id,
        )
        engine.fault_hook = fault_hook_from_env()  # TEST-ONLY; None unless its env var is set
        loaded = await asyncio.wrap_future(engine.start())
        return engine, loaded

    async def _start_embedding_model(self, spec: ModelSpec) -> tuple[Any, Any]:
        from app.engine.embedding_batcher import EmbeddingBatcher
        from app.models.embedding import load_embedding_model

        def load() -> Any:
            path = resolve_model_path(spec, self.settings)
            loaded = load_embedding_model(path)
            # The registry's context length rules (sentence-transformers' max_seq_length only
            # says where *it* truncates); the position table is the hard limit.
            positions = loaded.model.config.max_position_embeddings
            loaded.max_length = min(spec.context_length, positions)
            return loaded

        loaded = await asyncio.to_thread(load)
        batcher = EmbeddingBatcher.for_model(
            loaded,
            max_batch_size=self.settings.embedding_batch_size,
            max_wait_ms=self.settings.embedding_batch_wait_ms,
            name=spec.id,
        )
        batcher.start()
        await asyncio.to_thread(batcher.ready.wait)
        log.info("loaded embedding model %s (%d dimensions)", spec.id, loaded.dimensions)
        return batcher, loaded
