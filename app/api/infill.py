"""POST /infill (llama.cpp's code-infill route)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.body import json_body, request_body_doc
from app.api.cancellation import reply
from app.api.errors import request_context
from app.handler.infill import InfillHandler
from app.schemas.infill import InfillRequest

router = APIRouter()


@router.post("/infill", openapi_extra=request_body_doc(InfillRequest))
async def infill(
    request: Request, body: Annotated[InfillRequest, json_body(InfillRequest)]
) -> Response:
    handler: InfillHandler
    ctx, handler = request_context(request), request.app.state.infill
    run = await handler.prepare(body, ctx)
    stream = handler.stream(run, ctx) if body.stream else None  # llama.cpp: no [DONE]
    return await reply(request, ctx, run, stream, lambda: handler.complete(run, ctx), done=False)
