"""Application factory: ``create_app(settings)`` wires routers, middleware and the models."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import chat, completions, embeddings, health, models
from app.api.errors import install_error_handlers
from app.api.middleware import HTDIMiddleware
from app.config import Settings
from app.handler.chat import ChatHandler
from app.handler.completions import CompletionsHandler
from app.handler.embeddings import EmbeddingsHandler
from app.models.manager import ModelManager
from app.models.registry import ModelRegistry

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, registry: ModelRegistry | None = None) -> FastAPI:
    settings = settings or Settings()
    registry = registry or ModelRegistry.load(settings.models_file)
    manager = ModelManager(registry, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        manager.start_preloads()
        app.state.load_started = started
        try:
            yield
        finally:
            manager.draining = True
            await manager.stop()

    app = FastAPI(
        title="mlx-openai-server-lab",
        version="0.1.0",
        description="OpenAI-compatible server with MLX inference",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.manager = manager
    app.state.chat = ChatHandler(manager, settings)
    app.state.completions = CompletionsHandler(manager, settings)
    app.state.embeddings = EmbeddingsHandler(manager, settings)
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.add_middleware(HTDIMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
