"""POST /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.errors import request_context
from app.handler.embeddings import EmbeddingsHandler
from app.schemas.embeddings import EmbeddingRequest, EmbeddingResponse

router = APIRouter()


@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
    handler: EmbeddingsHandler = request.app.state.embeddings
    return JSONResponse(await handler.create(body, request_context(request)))
