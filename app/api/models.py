"""GET /v1/models and /v1/models/{id}: the registry in OpenAI's list shape."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.core import errors
from app.models.manager import ManagedModel, ModelManager
from app.schemas.openai import ModelCard, ModelList

router = APIRouter()


def _card(managed: ManagedModel, created: int) -> ModelCard:
    return ModelCard(id=managed.spec.id, created=created, metadata=managed.metadata())


@router.get("/models", include_in_schema=False)  # base URLs without /v1
@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    manager: ModelManager = request.app.state.manager
    created = request.app.state.started_at
    return ModelList(data=[_card(m, created) for m in manager.models.values()])


@router.get("/models/{model_id:path}", include_in_schema=False)
@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> ModelCard:
    manager: ModelManager = request.app.state.manager
    spec = manager.registry.get(model_id)
    if spec is None:
        raise errors.model_not_found(model_id)
    return _card(manager.models[spec.id], request.app.state.started_at)
