"""GET /v1/models and /v1/models/{id}: the registry in OpenAI's list shape."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.body import openai_route
from app.core import errors
from app.lifecycle.manager import ManagedModel, ModelManager
from app.schemas.openai import ModelCard, ModelList

router = APIRouter()


# Where a model comes from and how it has been used: for administrators, not every caller.
ADMIN_DETAIL = frozenset({"source", "load_seconds", "last_used", "memory_bytes", "in_flight",
                          "error", "batching"})


def shows_admin_detail(request: Request) -> bool:
    """Admin routes are on and the caller may use them (with the admin key when one is set)."""
    settings = request.app.state.settings
    if not settings.admin_enabled():
        return False
    if settings.admin_keys():
        return request.app.state.guard.admin_key_given(request.scope)
    return True


def _card(managed: ManagedModel, request: Request) -> ModelCard:
    metadata = managed.metadata()
    if not shows_admin_detail(request):
        metadata = {k: v for k, v in metadata.items() if k not in ADMIN_DETAIL}
    return ModelCard(id=managed.spec.id, created=request.app.state.started_at,
                     metadata=metadata)


@openai_route(router, "GET", "/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    manager: ModelManager = request.app.state.manager
    return ModelList(data=[_card(m, request) for m in manager.models.values()])


@openai_route(router, "GET", "/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> ModelCard:
    manager: ModelManager = request.app.state.manager
    spec = manager.registry.get(model_id)
    if spec is None:
        raise errors.model_not_found(model_id)
    return _card(manager.models[spec.id], request)
