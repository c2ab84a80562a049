"""POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API).

``anthropic-version`` and ``anthropic-beta`` headers are accepted and need not be sent;
the ``?beta=true`` query Claude Code adds is ignored too."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.body import json_body, request_body_doc
from app.api.cancellation import json_unless_disconnected
from app.api.errors import request_context
from app.api.sse import named_sse_response
from app.handler.messages import MessagesHandler, single_call
from app.handler.messages_stream import message_events
from app.schemas.anthropic import CountTokensRequest, MessagesRequest

router = APIRouter()


@router.post("/v1/messages", openapi_extra=request_body_doc(MessagesRequest))
async def create_message(
    request: Request, body: Annotated[MessagesRequest, json_body(MessagesRequest)]
) -> Response:
    handler: MessagesHandler = request.app.state.messages
    ctx = request_context(request)
    run = await handler.prepare(body, ctx)
    if body.stream:
        events = message_events(run, ctx, body.model, single_call(body))
        return named_sse_response(events)
    return await json_unless_disconnected(request, run, handler.complete(run, body, ctx))


@router.post("/v1/messages/count_tokens", openapi_extra=request_body_doc(CountTokensRequest))
async def count_tokens(
    request: Request, body: Annotated[CountTokensRequest, json_body(CountTokensRequest)]
) -> JSONResponse:
    handler: MessagesHandler = request.app.state.messages
    return JSONResponse(await handler.count_tokens(body, request_context(request)))
