"""Application factory: ``create_app(settings)`` wires routers, middleware and the models."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import (
    admin,
    chat,
    completions,
    embeddings,
    health,
    metrics,
    models,
    responses,
    tokenize,
)
from app.api.admin import install_sighup_reload
from app.api.auth import ApiKeyGuard
from app.api.browser_guard import BrowserGuard
from app.api.cors import EnvelopeCORSMiddleware
from app.api.errors import install_error_handlers
from app.api.middleware import HTDIMiddleware
from app.api.openapi import install_openapi
from app.config import Settings
from app.core.lifecycle import Lifecycle
from app.core.metrics import ServerMetrics
from app.generation.core import GenerationCore
from app.handler.chat import ChatHandler
from app.handler.completions import CompletionsHandler
from app.handler.embeddings import EmbeddingsHandler
from app.handler.responses.handler import ResponsesHandler
from app.handler.responses.store import open_store
from app.handler.tokenize import TokenizeHandler
from app.lifecycle.manager import ModelManager
from app.lifecycle.registry import ModelRegistry

log = logging.getLogger(__name__)

STREAMING_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")


async def _log_models_ready(manager: ModelManager, settings: Settings, started: float) -> None:
    """Start-up lines once the preloads are done: each model's state and load time, then
    where the server is ready (not when a preload failed: the manager logged why)."""
    await manager.wait_ready()
    elapsed = time.perf_counter() - started
    report = [
        {"model": m.spec.id, "type": m.spec.type, "state": m.state,
         "load_seconds": m.load_seconds, "error": m.error}
        for m in manager.models.values()
        if m.state != "unloaded"
    ]
    log.info(
        "models ready after %.2fs: %s", elapsed,
        ", ".join(_model_summary(r) for r in report) or "none",
        extra={"event": "models_loaded", "models": report,
               "startup_seconds": round(elapsed, 3)},
    )
    failed = [r for r in report if r["state"] == "failed"]  # the manager logged each cause
    host = "0.0.0.0 (all interfaces)" if settings.host in ("0.0.0.0", "::") else settings.host
    loaded = [r["model"] for r in report if r["state"] == "loaded"]
    if not failed:
        log.info("ready: http://%s:%s (models: %s)", host, settings.port,
                 ", ".join(loaded) or "none preloaded", extra={"event": "ready"})


def _model_summary(row: dict) -> str:
    if row["state"] == "failed":
        return f"{row['model']} failed"
    if row["load_seconds"] is None:
        return f"{row['model']} {row['state']}"
    return f"{row['model']} {row['state']} in {row['load_seconds']}s"


def create_app(settings: Settings | None = None, registry: ModelRegistry | None = None) -> FastAPI:
    settings = settings or Settings()
    registry = registry or ModelRegistry.load(settings.models_file)
    manager = ModelManager(registry, settings)
    lifecycle = Lifecycle(manager, settings.drain_timeout_s)
    server_metrics = ServerMetrics(manager, lifecycle)
    keys, admin_keys = settings.api_keys(), settings.admin_keys()
    guard = (
        ApiKeyGuard(keys, metrics_public=settings.metrics_public, admin_keys=admin_keys)
        if keys or admin_keys else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        manager.start_preloads()
        install_sighup_reload(app)
        app.state.load_started = started
        report = asyncio.ensure_future(_log_models_ready(manager, settings, started))
        try:
            yield
        finally:
            report.cancel()
            manager.draining = True
            await manager.stop()
            if store is not None:
                store.close()

    app = FastAPI(
        title="mlx-openai-server-lab",
        version="0.1.0",
        description="OpenAI-compatible server with MLX inference",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.guard = guard
    app.state.manager = manager
    app.state.lifecycle = lifecycle
    app.state.metrics = server_metrics
    core = GenerationCore(manager, settings)
    app.state.chat = ChatHandler(core)
    app.state.completions = CompletionsHandler(core)
    app.state.embeddings = EmbeddingsHandler(manager, settings)
    app.state.tokenize = TokenizeHandler(manager)
    store = None
    if settings.responses_store == "on":
        store = open_store(settings.cache_dir / "responses.sqlite3",
                           max_bytes=settings.responses_store_max_bytes,
                           max_age_s=settings.responses_store_max_age_s)
    app.state.responses = ResponsesHandler(core, store)
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(responses.router)
    app.include_router(embeddings.router)
    app.include_router(tokenize.router)
    if settings.admin_enabled():
        app.include_router(admin.router)
    if settings.metrics_enabled:
        app.include_router(metrics.router)
    install_openapi(app, STREAMING_PATHS)
    app.add_middleware(
        HTDIMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        guard=guard,
        lifecycle=lifecycle,
        metrics=server_metrics,
        log_prompts=settings.log_prompts,
        log_probes=settings.access_log_probes,
        body_timeout_s=settings.body_timeout_s,
        browser=BrowserGuard(settings.allowed_host_list(), settings.cors_origin_list(),
                             bound_host=settings.host),
    )
    origins = settings.cors_origin_list()
    if origins:  # outermost, so preflights never need a key and errors carry CORS headers
        app.add_middleware(
            EnvelopeCORSMiddleware, allow_origins=origins, max_age=settings.cors_max_age_s
        )
    return app
