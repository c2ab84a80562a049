"""POST /v1/chat/completions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.body import json_body, openai_route
from app.api.cancellation import ClientDisconnected, unless_disconnected
from app.api.errors import request_context
from app.api.sse import sse_response
from app.handler.chat import ChatHandler
from app.schemas.openai import ChatCompletion, ChatCompletionRequest

router = APIRouter()


@openai_route(router, "POST", "/chat/completions", response_model=ChatCompletion,
              body_model=ChatCompletionRequest)
async def create_chat_completion(
    request: Request, body: Annotated[ChatCompletionRequest, json_body(ChatCompletionRequest)]
) -> Response:
    handler: ChatHandler = request.app.state.chat
    ctx = request_context(request)
    run = await handler.prepare(body, ctx)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(handler.stream(run, ctx, include_usage), ctx)
    try:
        result = await unless_disconnected(request, handler.complete(run, ctx))
    except ClientDisconnected:
        run.close()
        return Response(status_code=499)
    return JSONResponse(result)
