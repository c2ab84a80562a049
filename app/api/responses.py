"""``/v1/responses`` (create, retrieve, delete, input items) and its token counter."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from app.api.body import json_body, openai_route
from app.api.cancellation import ClientDisconnected, unless_disconnected
from app.api.errors import request_context
from app.api.sse import named_sse_response
from app.handler.responses.handler import ResponsesHandler
from app.schemas.responses import ResponsesRequest

router = APIRouter()


def _handler(request: Request) -> ResponsesHandler:
    return request.app.state.responses


@openai_route(router, "POST", "/responses", response_model=None, body_model=ResponsesRequest)
async def create_response(
    request: Request, body: Annotated[ResponsesRequest, json_body(ResponsesRequest)]
) -> Response:
    handler, ctx = _handler(request), request_context(request)
    prepared = await handler.prepare(body, ctx)
    if body.stream:
        return named_sse_response(handler.stream(prepared, ctx))
    try:
        result = await unless_disconnected(request, handler.complete(prepared, ctx))
    except ClientDisconnected:
        prepared.run.close()
        return Response(status_code=499)
    return JSONResponse(result)


@openai_route(router, "POST", "/responses/input_tokens", response_model=None,
              body_model=ResponsesRequest)
async def count_input_tokens(
    request: Request, body: Annotated[ResponsesRequest, json_body(ResponsesRequest)]
) -> JSONResponse:
    return JSONResponse(await _handler(request).count(body, request_context(request)))


@openai_route(router, "GET", "/responses/{response_id}", response_model=None)
async def retrieve_response(response_id: str, request: Request) -> JSONResponse:
    return JSONResponse(await _handler(request).get(response_id, request_context(request)))


@openai_route(router, "DELETE", "/responses/{response_id}", response_model=None)
async def delete_response(response_id: str, request: Request) -> JSONResponse:
    return JSONResponse(await _handler(request).delete(response_id, request_context(request)))


@openai_route(router, "GET", "/responses/{response_id}/input_items", response_model=None)
async def list_input_items(
    response_id: str,
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> JSONResponse:
    result = await _handler(request).input_items(
        response_id, request_context(request), limit=limit, order=order, after=after)
    return JSONResponse(result)
