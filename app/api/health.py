"""Liveness (/health) and readiness (/ready, /health/ready)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.api.errors import error_response
from app.api.openapi import error_responses
from app.core import errors
from app.lifecycle.manager import ModelManager

router = APIRouter()


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    models: dict[str, str]


@router.head("/health", include_in_schema=False)
@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: 200 while the process serves, draining included."""
    return Health()


@router.head("/ready", include_in_schema=False)
@router.head("/health/ready", include_in_schema=False)
@router.get("/ready", response_model=Readiness, responses=error_responses(503))
@router.get("/health/ready", response_model=Readiness, responses=error_responses(503))
async def ready(request: Request) -> JSONResponse:
    """Readiness: 503 ``model_loading`` until the preload models are loaded,
    ``model_not_loaded`` when one was unloaded or failed, ``shutting_down`` while draining."""
    manager: ModelManager = request.app.state.manager
    states = {m.spec.id: m.state for m in manager.models.values()}
    if manager.ready():
        return JSONResponse(Readiness(models=states).model_dump())
    if manager.draining:
        error = errors.shutting_down()
    else:
        missing = {m.spec.id: m.state for m in manager.models.values()
                   if m.spec.preload and not m.removed and m.state != "loaded"}
        loading = any(s == "loading" for s in missing.values())
        error = errors.APIError(
            503,
            "Models not loaded: " + ", ".join(f"{m} ({s})" for m, s in missing.items()) + ".",
            type="server_error",
            code="model_loading" if loading else "model_not_loaded",
            headers={"Retry-After": "2"},
        )
    return error_response(request, error)
