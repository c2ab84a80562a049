"""OpenAPI document: real error schemas on every route, SSE on streaming ones, no 422.

The server never answers 422 (validation errors are 400 envelopes), so FastAPI's default
422 entries are replaced by the statuses it does send, each with the envelope's schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from app.api.body import BODY_MODELS


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    requestId: str | None = None  # noqa: N815 - HTDI's field name


class HTDI(BaseModel):
    requestId: str  # noqa: N815
    houseId: str | None = None  # noqa: N815
    source: str | None = None
    latencyMs: float  # noqa: N815
    model: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody
    htdi: HTDI | None = None


_DESCRIPTIONS = {
    400: "Invalid request (malformed JSON, wrong types, out-of-range values, limits)",
    401: "Missing or wrong API key (when one is configured)",
    404: "Unknown model or path",
    405: "Method not allowed",
    413: "Request body over the size limit",
    429: "Model queue full",
    431: "Request line and headers over the size limit",
    499: "Client closed the request (no body)",
    500: "Unexpected server error",
    503: "Model loading, queue timeout or server shutting down",
}
# What any route can answer: the edge middleware runs before routing.
EDGE_STATUSES = (400, 401, 404, 405, 413, 431, 500, 503)
GENERATION_STATUSES = (429,)


def http_routes(app: Any) -> list[tuple[str, set[str]]]:
    """Every HTTP route of ``app`` as (path template, methods), included routers flattened."""
    try:  # FastAPI >= 0.13x wraps included routers; this walks into them
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        pairs = [(getattr(r, "path", None), getattr(r, "methods", None)) for r in app.routes]
    else:
        pairs = [(c.path, getattr(c.original_route, "methods", None))
                 for c in iter_route_contexts(app.routes)]
    return [(path, set(methods)) for path, methods in pairs if path and methods]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these statuses, with the envelope schema."""
    return {s: {"model": ErrorEnvelope, "description": _DESCRIPTIONS[s]} for s in statuses}


def install_openapi(app: FastAPI, streaming_paths: tuple[str, ...]) -> None:
    """Generate the schema once: edge errors everywhere, SSE on ``streaming_paths``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(_model_schemas(ErrorEnvelope, components))
        for model in sorted(BODY_MODELS, key=lambda m: m.__name__):  # read by json_body
            components.update(_model_schemas(model, components))
        ref = {"$ref": "#/components/schemas/ErrorEnvelope"}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                statuses = EDGE_STATUSES
                if path in streaming_paths:
                    statuses += GENERATION_STATUSES
                for status in statuses:
                    responses.setdefault(str(status), {
                        "description": _DESCRIPTIONS[status],
                        "content": {"application/json": {"schema": ref}},
                    })
                if path in streaming_paths and method == "post":
                    responses["499"] = {"description": _DESCRIPTIONS[499]}
                    content = responses.setdefault("200", {}).setdefault("content", {})
                    content["text/event-stream"] = {
                        "schema": {"type": "string",
                                   "description": "SSE chunks when stream is true"}
                    }
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _model_schemas(model: type[BaseModel], existing: dict[str, Any]) -> dict[str, Any]:
    """The JSON schemas of ``model`` and its sub-models, as OpenAPI components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    out = {name: value for name, value in defs.items() if name not in existing}
    out[model.__name__] = schema
    return out
