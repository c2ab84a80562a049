"""Model administration: load, unload, registry reload (also on SIGHUP).

Guarded by the API key like every other route when one is set.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel

from app.api.errors import request_context
from app.core import errors
from app.lifecycle.manager import ManagedModel, ModelManager
from app.lifecycle.registry import ModelRegistry, RegistryError

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin")


class ModelState(BaseModel):
    id: str
    state: str
    metadata: dict
    htdi: dict


class ReloadResult(BaseModel):
    added: list[str]
    removed: list[str]
    changed: list[str]
    htdi: dict


def _state(managed: ManagedModel, request: Request) -> ModelState:
    request_context(request).model = managed.spec.id  # htdi.model names the model acted on
    return ModelState(
        id=managed.spec.id,
        state=managed.state,
        metadata=managed.metadata(),
        htdi=request_context(request).htdi(),
    )


@router.post("/models/{model_id:path}/load", response_model=ModelState)
async def load_model(model_id: str, request: Request) -> ModelState:
    manager: ModelManager = request.app.state.manager
    managed = await manager.load(model_id)
    if managed.state != "loaded":
        raise errors.APIError(
            503, f"The model {model_id!r} failed to load: {managed.error}",
            type="server_error", code="model_load_failed",
        )
    return _state(managed, request)


@router.post("/models/{model_id:path}/unload", response_model=ModelState)
async def unload_model(model_id: str, request: Request) -> ModelState:
    manager: ModelManager = request.app.state.manager
    return _state(await manager.unload(model_id), request)


async def reload_registry(app: FastAPI) -> dict[str, list[str]]:
    manager: ModelManager = app.state.manager
    path = manager.settings.models_file
    if path is None:
        raise errors.APIError(
            400, "The server runs on the built-in registry; start it with --models-file to "
            "reload.", code="no_models_file",
        )
    try:
        registry = await asyncio.to_thread(ModelRegistry.from_yaml, path)
    except RegistryError as exc:
        raise errors.invalid_request(f"The models file was not reloaded: {exc}") from exc
    return await manager.reload(registry)


@router.post("/reload", response_model=ReloadResult)
async def reload(request: Request) -> ReloadResult:
    changes = await reload_registry(request.app)
    return ReloadResult(**changes, htdi=request_context(request).htdi())


def install_sighup_reload(app: FastAPI) -> None:
    """SIGHUP re-reads the models file, as daemons do; failures are logged, not fatal."""

    async def run() -> None:
        try:
            await reload_registry(app)
        except errors.APIError as exc:
            log.error("SIGHUP reload failed: %s", exc.message)

    try:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(run()))
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
        log.debug("SIGHUP reload not installed")
