"""GET /v1/models and /v1/models/{id}: the registry in OpenAI's list shape."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.core import errors
from app.lifecycle.manager import ManagedModel, ModelManager, model_files_cached
from app.schemas.openai import ModelCard, ModelList

router = APIRouter()


def _card(managed: ManagedModel, created: int, manager: ModelManager) -> ModelCard:
    meta = managed.metadata()
    # loaded models are cached by definition; the others are looked up (file checks only)
    meta["cached"] = True if managed.state == "loaded" else model_files_cached(
        managed.spec, manager.settings)
    return ModelCard(id=managed.spec.id, created=created, metadata=meta)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    manager: ModelManager = request.app.state.manager
    created = request.app.state.started_at
    return ModelList(data=[_card(m, created, manager) for m in manager.models.values()])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> ModelCard:
    manager: ModelManager = request.app.state.manager
    spec = manager.registry.get(model_id)
    if spec is None:
        raise errors.model_not_found(model_id)
    return _card(manager.models[spec.id], request.app.state.started_at, manager)
