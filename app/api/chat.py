"""POST /v1/chat/completions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.body import json_body, openai_route
from app.api.cancellation import reply
from app.api.errors import request_context
from app.handler.chat import ChatHandler
from app.schemas.openai import ChatCompletion, ChatCompletionRequest

router = APIRouter()


@openai_route(router, "POST", "/chat/completions/input_tokens", response_model=None,
              body_model=ChatCompletionRequest)
async def chat_input_tokens(
    request: Request, body: Annotated[ChatCompletionRequest, json_body(ChatCompletionRequest)]
) -> Response:
    """The rendered prompt of a chat request and its token count (template debugging)."""
    return JSONResponse(await request.app.state.chat.input_tokens(body, request_context(request)))


@openai_route(router, "POST", "/chat/completions", response_model=ChatCompletion,
              body_model=ChatCompletionRequest)
async def create_chat_completion(
    request: Request, body: Annotated[ChatCompletionRequest, json_body(ChatCompletionRequest)]
) -> Response:
    handler: ChatHandler = request.app.state.chat
    ctx = request_context(request)
    run = await handler.prepare(body, ctx)
    usage = bool(body.stream_options and body.stream_options.include_usage)
    stream = handler.stream(run, ctx, usage) if body.stream else None
    return await reply(request, ctx, run, stream, lambda: handler.complete(run, ctx))
