"""POST /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.cancellation import ClientDisconnected, unless_disconnected
from app.api.errors import request_context
from app.handler.embeddings import EmbeddingsHandler
from app.schemas.embeddings import EmbeddingRequest, EmbeddingResponse

router = APIRouter()


@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    handler: EmbeddingsHandler = request.app.state.embeddings
    try:  # a client that leaves cancels its request (the batcher drops it before its next pass)
        result = await unless_disconnected(request, handler.create(body, request_context(request)))
    except ClientDisconnected:
        return Response(status_code=499)
    return JSONResponse(result)
