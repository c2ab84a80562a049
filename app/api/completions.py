"""POST /v1/completions (legacy)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.body import json_body, openai_route
from app.api.cancellation import ClientDisconnected, unless_disconnected
from app.api.errors import request_context
from app.api.sse import sse_response
from app.handler.completions import CompletionsHandler
from app.schemas.openai import Completion, CompletionRequest

router = APIRouter()


@openai_route(router, "POST", "/completions", response_model=Completion,
              body_model=CompletionRequest)
async def create_completion(
    request: Request, body: Annotated[CompletionRequest, json_body(CompletionRequest)]
) -> Response:
    handler: CompletionsHandler = request.app.state.completions
    ctx = request_context(request)
    run, echoes = await handler.prepare(body, ctx)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(handler.stream(run, echoes, ctx, include_usage), ctx)
    try:
        result = await unless_disconnected(request, handler.complete(run, echoes, ctx))
    except ClientDisconnected:
        run.close()
        return Response(status_code=499)
    return JSONResponse(result)
