"""POST /v1/completions (legacy)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.cancellation import answer
from app.api.errors import request_context
from app.api.sse import sse_response
from app.handler.completions import CompletionsHandler
from app.schemas.openai import Completion, CompletionRequest

router = APIRouter()


@router.post("/v1/completions", response_model=Completion)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    handler: CompletionsHandler = request.app.state.completions
    ctx = request_context(request)
    run, echoes = await handler.prepare(body, ctx)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(handler.stream(run, echoes, ctx, include_usage), ctx)
    return await answer(request, run, handler.complete(run, echoes, ctx))
