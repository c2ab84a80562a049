"""POST /v1/embeddings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.body import json_body, openai_route
from app.api.errors import request_context
from app.handler.embeddings import EmbeddingsHandler
from app.schemas.embeddings import EmbeddingRequest, EmbeddingResponse

router = APIRouter()


@openai_route(router, "POST", "/embeddings", response_model=EmbeddingResponse,
              body_model=EmbeddingRequest)
async def create_embeddings(
    request: Request, body: Annotated[EmbeddingRequest, json_body(EmbeddingRequest)]
) -> JSONResponse:
    handler: EmbeddingsHandler = request.app.state.embeddings
    return JSONResponse(await handler.create(body, request_context(request)))
