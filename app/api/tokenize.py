"""POST /tokenize and /detokenize (vLLM's utility endpoints)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.errors import request_context
from app.handler.tokenize import TokenizeHandler
from app.schemas.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter()


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> JSONResponse:
    handler: TokenizeHandler = request.app.state.tokenize
    return JSONResponse(await handler.tokenize(body, request_context(request)))


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, request: Request) -> JSONResponse:
    handler: TokenizeHandler = request.app.state.tokenize
    return JSONResponse(await handler.detokenize(body, request_context(request)))
