"""Liveness (/health) and readiness (/ready, /health/ready)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.errors import error_response
from app.core import errors
from app.models.manager import ModelManager

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    manager: ModelManager = request.app.state.manager
    states = {m.spec.id: m.state for m in manager.models.values()}
    if manager.ready():
        return JSONResponse({"status": "ready", "models": states})
    if manager.draining:
        error = errors.APIError(
            503, "The server is shutting down.", type="server_error", code="shutting_down"
        )
    else:
        loading = [m for m, s in states.items() if s != "loaded"]
        error = errors.APIError(
            503,
            f"Models not loaded yet: {', '.join(loading)}.",
            type="server_error",
            code="model_loading",
            headers={"Retry-After": "2"},
        )
    response = error_response(request, error)
    return response
