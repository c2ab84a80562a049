"""POST /infill (llama.cpp's code-infill route)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.body import json_body, request_body_doc
from app.api.cancellation import answer
from app.api.errors import request_context
from app.api.sse import sse_response
from app.handler.infill import InfillHandler
from app.schemas.infill import InfillRequest

router = APIRouter()


@router.post("/infill", openapi_extra=request_body_doc(InfillRequest))
async def infill(
    request: Request, body: Annotated[InfillRequest, json_body(InfillRequest)]
) -> Response:
    handler: InfillHandler = request.app.state.infill
    ctx = request_context(request)
    run = await handler.prepare(body, ctx)
    if body.stream:
        return sse_response(handler.stream(run, ctx), ctx, done=False)
    return await answer(request, run, handler.complete(run, ctx))
