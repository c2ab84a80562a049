"""POST /tokenize and /detokenize (vLLM's utility endpoints)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.body import json_body, request_body_doc
from app.api.errors import request_context
from app.handler.tokenize import TokenizeHandler
from app.schemas.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter()


@router.post("/tokenize", response_model=TokenizeResponse,
             openapi_extra=request_body_doc(TokenizeRequest))
async def tokenize(
    request: Request, body: Annotated[TokenizeRequest, json_body(TokenizeRequest)]
) -> JSONResponse:
    handler: TokenizeHandler = request.app.state.tokenize
    return JSONResponse(await handler.tokenize(body, request_context(request)))


@router.post("/detokenize", response_model=DetokenizeResponse,
             openapi_extra=request_body_doc(DetokenizeRequest))
async def detokenize(
    request: Request, body: Annotated[DetokenizeRequest, json_body(DetokenizeRequest)]
) -> JSONResponse:
    handler: TokenizeHandler = request.app.state.tokenize
    return JSONResponse(await handler.detokenize(body, request_context(request)))
