"""JSON request bodies: parsed once, validated off the event loop when large.

FastAPI parses a body with ``json.loads`` and validates it on the event loop; with the
edge's own checks that meant two parses, and a 3.6 MB ``prompt`` froze ``/health`` for
3-4 s. Routes take their body through :func:`json_body` instead: the edge checks
(``app/core/limits.py``, no parse), one ``json.loads`` and one Pydantic validation, in a
worker thread for bodies over ``LARGE_BODY_BYTES``. The OpenAPI document still shows the
schema (:func:`request_body_doc`, collected by ``app/api/openapi.py``).

A body whose content type is not JSON (``text/plain``; form types are refused earlier, in
``app/api/browser_guard.py``) is read as JSON when it parses, else refused with 415.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from app.api.browser_guard import media_type
from app.api.validation import validation_error
from app.core.errors import APIError
from app.core.limits import UNPARSED, is_json_content, preparse_json_body

M = TypeVar("M", bound=BaseModel)
LARGE_BODY_BYTES = 256 * 1024
BODY_MODELS: set[type[BaseModel]] = set()  # for the OpenAPI components


def parse_body(raw: bytes, model: type[M], max_depth: int, content_type: str | None) -> M:
    """Check, parse and validate ``raw`` as ``model``; raises the 4xx ``APIError``."""
    if not raw:
        raise APIError(400, "The request body is empty; send a JSON object.")
    error, data = preparse_json_body(raw, max_depth)
    if error is not None:
        raise error
    if data is UNPARSED:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            if not is_json_content(content_type):
                raise APIError(
                    415,
                    f"Request bodies must be JSON, sent with 'Content-Type: application/json'"
                    f"; this one is {media_type(content_type)!r} and not JSON.",
                    code="unsupported_media_type",
                ) from exc
            detail = getattr(exc, "msg", "invalid JSON")
            raise APIError(400, f"We could not parse the JSON body of your request: {detail}.",
                           code="invalid_json") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from exc


def json_body(model: type[M]) -> Any:
    """``body: Model = json_body(Model)``: the parsed body as a FastAPI dependency."""

    async def dependency(request: Request) -> M:
        raw = await request.body()
        depth = request.app.state.settings.max_json_depth
        content_type = request.headers.get("content-type")
        if len(raw) > LARGE_BODY_BYTES:
            return await asyncio.to_thread(parse_body, raw, model, depth, content_type)
        return parse_body(raw, model, depth, content_type)

    return Depends(dependency)


def request_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is read by :func:`json_body`."""
    BODY_MODELS.add(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": ref}}}}


def openai_route(router: Any, method: str, path: str, *, response_model: Any,
                 body_model: type[BaseModel] | None = None) -> Any:
    """Register an endpoint at ``/v1{path}`` (documented) and at ``{path}``, for base URLs
    pasted without ``/v1``; ``body_model`` documents a body read by :func:`json_body`."""
    extra = request_body_doc(body_model) if body_model is not None else None

    def register(endpoint: Any) -> Any:
        router.add_api_route("/v1" + path, endpoint, methods=[method],
                             response_model=response_model, openapi_extra=extra)
        router.add_api_route(path, endpoint, methods=[method], include_in_schema=False)
        return endpoint

    return register
