"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.cancellation import answer
from app.api.errors import request_context
from app.api.sse import sse_response
from app.handler.chat import ChatHandler
from app.schemas.openai import ChatCompletion, ChatCompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions/input_tokens")
async def chat_input_tokens(body: ChatCompletionRequest, request: Request) -> Response:
    """The rendered prompt of a chat request and its token count (template debugging)."""
    handler: ChatHandler = request.app.state.chat
    return JSONResponse(await handler.input_tokens(body, request_context(request)))


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    handler: ChatHandler = request.app.state.chat
    ctx = request_context(request)
    run = await handler.prepare(body, ctx)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(handler.stream(run, ctx, include_usage), ctx)
    return await answer(request, run, handler.complete(run, ctx))
